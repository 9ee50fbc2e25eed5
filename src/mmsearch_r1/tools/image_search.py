"""The image search tool: search with the question's image, return thumbnails interleaved with page titles.

`ImageSearchTool(backend, top_k=5, thumbnail_max_side=256)(arg, sample)` queries the backend with
`ImageQuery(image=sample.images[0], url=sample.image_urls[0], key=sample.id)` (image and url when present;
`arg` is ignored: the protocol's image search takes no argument) and returns the first `top_k` hits as parts
`[thumb1, "1. title\n", thumb2, "2. title\n", ...]`. Thumbnails are decoded and downscaled so their longer side
is at most `thumbnail_max_side` (aspect kept); a hit whose thumbnail is missing or undecodable keeps its title
without an image. Titles are sanitized (`tools.sanitize`) and capped at `max_title_chars`. No hits gives ok=True
with a text saying nothing was found; a backend error gives ok=False (see `tools.base`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from mmsearch_r1.search.base import Counters, ImageQuery, ImageSearchBackend
from mmsearch_r1.tools.base import describe_error, failure
from mmsearch_r1.tools.sanitize import sanitize
from mmsearch_r1.types import Part, Sample, ToolResult

log = logging.getLogger(__name__)


class ImageSearchTool:
    name = "image_search"

    def __init__(
        self,
        backend: ImageSearchBackend,
        top_k: int = 5,
        thumbnail_max_side: int = 256,
        max_title_chars: int = 200,
    ) -> None:
        if top_k < 1 or thumbnail_max_side < 1:
            raise ValueError("image search tool: top_k and thumbnail_max_side must be >= 1")
        self.backend = backend
        self.top_k = top_k
        self.thumbnail_max_side = thumbnail_max_side
        self.max_title_chars = max_title_chars
        self.counters = Counters()

    def _thumbnail(self, hit: Any) -> Any | None:
        if hit.thumbnail is None:
            return None
        try:
            img = hit.thumbnail.load() if hasattr(hit.thumbnail, "load") else hit.thumbnail.convert("RGB")
        except (ValueError, OSError) as e:
            log.warning("image search: undecodable thumbnail for %r: %s", hit.title[:80], e)
            return None
        if max(img.size) > self.thumbnail_max_side:
            img = img.copy()
            img.thumbnail((self.thumbnail_max_side, self.thumbnail_max_side))
        return img

    def __call__(self, arg: str | None, sample: Sample) -> ToolResult:
        t0 = time.perf_counter()
        stats: dict[str, float] = {"calls": 1, "errors": 0, "hits": 0, "thumbnails": 0, "thumbnail_errors": 0}
        try:
            query = ImageQuery(
                image=sample.images[0] if sample.images else None,
                url=sample.image_urls[0] if sample.image_urls else None,
                key=sample.id,
            )
            hits = list(self.backend.search(query, self.top_k))[: self.top_k]
        except Exception as e:  # any backend failure becomes an error observation
            stats["errors"] = 1
            stats["latency_s"] = time.perf_counter() - t0
            self._count(stats)
            log.warning("image search failed for sample %s: %s", sample.id, describe_error(e))
            return failure("image search", describe_error(e), stats, stats["latency_s"])
        parts: list[Part] = []
        for i, hit in enumerate(hits, 1):
            img = self._thumbnail(hit)
            if img is not None:
                parts.append(img)
                stats["thumbnails"] += 1
            elif hit.thumbnail is not None:
                stats["thumbnail_errors"] += 1
            title = sanitize(hit.title, self.max_title_chars) or "(untitled)"
            parts.append(f"{i}. {title}\n")
        stats["hits"] = len(hits)
        if not hits:
            parts = ["The image search found no matching images.\n"]
        stats["latency_s"] = time.perf_counter() - t0
        self._count(stats)
        return ToolResult(parts, ok=True, latency_s=stats["latency_s"], stats=stats)

    def _count(self, stats: dict[str, float]) -> None:
        for k, v in stats.items():
            self.counters.incr(k, v)
