"""Model-facing tools (layer 3, no torch): image search and text search, built from search backends.

`build_tools(search_cfg)` returns `{"image_search": ImageSearchTool, "text_search": TextSearchTool}` (keys are
the protocol's action kinds), with backends built by `search.factory` (so caches, retries and concurrency limits
configured there apply). Tool options beyond `top_k` can be passed as `image_opts` / `text_opts`.
"""

from __future__ import annotations

from typing import Any

from mmsearch_r1.config import SearchConfig
from mmsearch_r1.tools.base import Tool
from mmsearch_r1.tools.image_search import ImageSearchTool
from mmsearch_r1.tools.sanitize import sanitize
from mmsearch_r1.tools.text_search import TextSearchTool

__all__ = ["ImageSearchTool", "TextSearchTool", "Tool", "build_tools", "sanitize"]


def build_tools(
    search_cfg: SearchConfig,
    *,
    image_opts: dict[str, Any] | None = None,
    text_opts: dict[str, Any] | None = None,
) -> dict[str, Tool]:
    """Both tools from the search config; a bad backend config raises ValueError naming the component."""
    from mmsearch_r1.search.factory import build_image_backend, build_text_pipeline

    backend, reader, summarizer = build_text_pipeline(search_cfg)
    text = TextSearchTool(backend, reader, summarizer, top_k=search_cfg.top_k, **(text_opts or {}))
    image = ImageSearchTool(build_image_backend(search_cfg), top_k=search_cfg.top_k, **(image_opts or {}))
    return {image.name: image, text.name: text}
