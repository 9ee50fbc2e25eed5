"""The `Tool` protocol and helpers shared by the model-facing tools (layer 3, no torch).

A tool is called by the agent loop from a worker thread as `tool(arg, sample)` (`arg` is the text-search query,
None for image search) and returns a `ToolResult`: observation parts in order (text strings and PIL images),
`ok`/`error`, `latency_s` and per-call `stats` (`calls`, `errors`, `latency_s`, `hits`, plus tool-specific
counts). It never raises: any backend exception becomes `ok=False` with a text that tells the model the search
failed and to go on with its own knowledge. Each tool also keeps process-lifetime totals in `counters`.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

from mmsearch_r1.search.base import Counters
from mmsearch_r1.types import Sample, ToolResult

log = logging.getLogger(__name__)


@runtime_checkable
class Tool(Protocol):
    """A model-facing tool; `name` is the action kind it serves ("image_search" or "text_search")."""

    name: str
    counters: Counters

    def __call__(self, arg: str | None, sample: Sample) -> ToolResult: ...


def failure(kind: str, error: str, stats: dict[str, float], latency_s: float) -> ToolResult:
    """An error observation. The model sees only a generic message; `error` (for logs) has the details."""
    text = f"The {kind} failed and returned no results. Go on with your own knowledge.\n"
    return ToolResult([text], ok=False, error=error, latency_s=latency_s, stats=stats)


def describe_error(e: BaseException) -> str:
    """`Type: message` for an exception, one line, capped (error strings go to logs and traces)."""
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:500]}"
