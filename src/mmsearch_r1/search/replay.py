"""Replay image search: answers from cached results (e.g. the FVQA release), keyed by sample id.

Reads the converter's layout `DIR/manifest.jsonl`, one line per query:
`{"key": str, "results": [{"title": str, "thumbnail": "images/x.png" | null, "thumbnail_url": str | null,
"url": str | null}]}`. `ReplayImageBackend(root)` (registered as image backend `"replay"`) answers
`search(ImageQuery, k)` for `query.key` with the first k results, in file order. A thumbnail path is relative to
`DIR` and must stay inside it; its bytes are read at search time into `ImageData`; a listed file that is
missing is logged and the hit keeps its title and `thumbnail_url` (no thumbnail). A query without a key, or with
a key not in the manifest, is a non-retryable SearchError: replay cannot search anything new.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mmsearch_r1.search.base import IMAGE_BACKENDS, ImageHit, ImageQuery, SearchError
from mmsearch_r1.types import ImageData

log = logging.getLogger(__name__)


def _opt_str(row: dict[str, Any], key: str, where: str) -> str | None:
    v = row.get(key)
    if v is not None and not isinstance(v, str):
        raise ValueError(f"{where}: field {key!r} must be a string or null, got {type(v).__name__}")
    return v


def read_manifest(root: str | Path) -> dict[str, list[dict[str, str | None]]]:
    """key -> results from `root/manifest.jsonl`; bad lines raise ValueError naming the line and field."""
    root = Path(root)
    path = root / "manifest.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"replay: no manifest at {str(path)!r}")
    base = root.resolve()
    out: dict[str, list[dict[str, str | None]]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON: {e}") from None
            if not isinstance(row, dict) or not isinstance(row.get("key"), str):
                raise ValueError(f"{where}: field 'key' must be a string")
            results = row.get("results")
            if not isinstance(results, list):
                raise ValueError(f"{where}: field 'results' must be a list")
            clean = []
            for j, r in enumerate(results):
                w = f"{where}: results[{j}]"
                if not isinstance(r, dict):
                    raise ValueError(f"{w}: expected an object")
                title = r.get("title", "")
                if not isinstance(title, str):
                    raise ValueError(f"{w}: field 'title' must be a string")
                thumb = _opt_str(r, "thumbnail", w)
                if thumb is not None and not (base / thumb).resolve().is_relative_to(base):
                    raise ValueError(f"{w}: field 'thumbnail' {thumb!r} points outside {str(root)!r}")
                clean.append(
                    {
                        "title": title,
                        "thumbnail": thumb,
                        "thumbnail_url": _opt_str(r, "thumbnail_url", w),
                        "url": _opt_str(r, "url", w),
                    }
                )
            if row["key"] in out:
                log.warning("%s: duplicate key %r; the later line wins", where, row["key"])
            out[row["key"]] = clean
    return out


class ReplayImageBackend:
    """Image search served from a converted results manifest (see the module docstring)."""

    name = "replay"

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self.entries = read_manifest(self.root)

    def cache_params(self) -> dict[str, Any]:
        return {"root": str(self.root.resolve()), "n": len(self.entries)}

    def search(self, query: ImageQuery, k: int) -> list[ImageHit]:
        if not query.key:
            raise SearchError("replay image search needs the query key (the sample id)", retryable=False)
        results = self.entries.get(query.key)
        if results is None:
            raise SearchError(
                f"replay: no cached image-search results for key {query.key!r}", retryable=False
            )
        hits = []
        for r in results[: max(k, 0)]:
            thumb = None
            if r["thumbnail"] is not None:
                try:
                    thumb = ImageData(bytes=(self.root / r["thumbnail"]).read_bytes())
                except OSError as e:
                    log.warning(
                        "replay: thumbnail %s for key %r unreadable: %s", r["thumbnail"], query.key, e
                    )
            hits.append(
                ImageHit(
                    title=r["title"] or "",
                    url=r["url"] or "",
                    thumbnail=thumb,
                    thumbnail_url=r["thumbnail_url"],
                    source="replay",
                )
            )
        return hits


IMAGE_BACKENDS.register("replay")(ReplayImageBackend)
