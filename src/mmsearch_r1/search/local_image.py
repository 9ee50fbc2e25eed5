"""Local, offline image search: nearest neighbours (faiss, inner product) over embedded index images.

- `build_image_index(images_jsonl, out_dir, image_root=None, embedder="builtin")` reads rows
  `{"image": <path relative to image_root>, "title": str, "url": str}` (image_root defaults to the JSONL's
  folder), embeds every image (`embedders.make_embedder`), and writes to `out_dir`: `vectors.faiss`
  (`IndexFlatIP` over L2-normalized rows, so scores are cosine similarities), `items.jsonl` (title, url, source
  image path, thumbnail path), `thumbs/NNNNNN.jpg` (each image downscaled to `thumb_max_side`, JPEG) and
  `image_index.json` (format version, count, embedder spec, dim).
- `LocalImageBackend(index_dir, embedder=None)` (registered as image backend `"local"`) loads that directory
  (or `index_dir/image/`, the layout of `mmsearch-r1 search index --out DIR`) and answers
  `search(ImageQuery, k)` with `ImageHit`s, best first, whose thumbnails are `ImageData` with the stored JPEG
  bytes. The query must carry the image itself (`ImageQuery.image`); a query with only a url or key is a
  non-retryable SearchError. `embedder` overrides the stored spec (e.g. another local weights path).
"""

from __future__ import annotations

import io
import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from mmsearch_r1.search.base import IMAGE_BACKENDS, ImageHit, ImageQuery, SearchError
from mmsearch_r1.search.embedders import Embedder, make_embedder
from mmsearch_r1.search.local_text import _need_dir, resolve_index_dir
from mmsearch_r1.types import ImageData

log = logging.getLogger(__name__)

INDEX_META = "image_index.json"
FORMAT_VERSION = 1


def read_image_rows(path: str | Path) -> list[dict[str, str]]:
    """Rows of an images JSONL; a bad line raises ValueError naming the line and field."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON: {e}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object")
            if not isinstance(row.get("image"), str) or not row["image"]:
                raise ValueError(f"{path}:{n}: field 'image' must be a non-empty path string")
            for key in ("title", "url"):
                if not isinstance(row.get(key, ""), str):
                    raise ValueError(f"{path}:{n}: field {key!r} must be a string")
            rows.append({"image": row["image"], "title": row.get("title", ""), "url": row.get("url", "")})
    return rows


def _thumb_bytes(img: Any, max_side: int) -> bytes:
    t = img.copy()
    t.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    t.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def build_image_index(
    images_jsonl: str | Path,
    out_dir: str | Path,
    image_root: str | Path | None = None,
    embedder: str | dict[str, Any] | Embedder | None = "builtin",
    thumb_max_side: int = 256,
    batch_size: int = 64,
) -> Path:
    """Embed and index the images listed in `images_jsonl` into `out_dir`; returns `out_dir`."""
    import faiss
    from PIL import Image, UnidentifiedImageError

    rows = read_image_rows(images_jsonl)
    if not rows:
        raise ValueError(f"image index: no rows in {images_jsonl}")
    root = Path(image_root) if image_root is not None else Path(images_jsonl).parent
    emb = embedder if isinstance(embedder, Embedder) else make_embedder(embedder)
    out = Path(out_dir)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    index = faiss.IndexFlatIP(emb.dim)
    items = []
    for start in range(0, len(rows), batch_size):
        batch = []
        for n, row in enumerate(rows[start : start + batch_size], start + 1):
            path = root / row["image"]
            try:
                with Image.open(path) as im:
                    img = im.convert("RGB")
            except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
                raise ValueError(
                    f"{images_jsonl}: row {n}: field 'image': cannot read {str(path)!r}: {e}"
                ) from None
            thumb = f"thumbs/{n - 1:06d}.jpg"
            (out / thumb).write_bytes(_thumb_bytes(img, thumb_max_side))
            items.append({"title": row["title"], "url": row["url"], "image": row["image"], "thumb": thumb})
            batch.append(img)
        index.add(np.ascontiguousarray(emb.embed(batch), dtype=np.float32))
    faiss.write_index(index, str(out / "vectors.faiss"))
    with open(out / "items.jsonl", "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    meta = {"format": FORMAT_VERSION, "n_items": len(items), "embedder": emb.spec(), "dim": emb.dim}
    (out / INDEX_META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    log.info("image index: %d images -> %s (embedder %s)", len(items), out, emb.name)
    return out


class LocalImageBackend:
    """Nearest-neighbour image search over a persisted local index (see the module docstring)."""

    name = "local"

    def __init__(self, index_dir: str | None = None, embedder: str | dict[str, Any] | None = None) -> None:
        import faiss

        _need_dir(index_dir, "image_backend")
        self.index_dir = resolve_index_dir(index_dir, INDEX_META, "image")
        meta = json.loads((self.index_dir / INDEX_META).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"image index {self.index_dir}: format {meta.get('format')}, need {FORMAT_VERSION}"
            )
        self.embedder = make_embedder(embedder if embedder is not None else meta["embedder"])
        if self.embedder.dim != meta["dim"]:
            raise ValueError(
                f"image index {self.index_dir}: embedder {self.embedder.name!r} has dim {self.embedder.dim}, "
                f"the index was built with dim {meta['dim']}"
            )
        self.index = faiss.read_index(str(self.index_dir / "vectors.faiss"))
        with open(self.index_dir / "items.jsonl", encoding="utf-8") as f:
            self.items = [json.loads(line) for line in f if line.strip()]
        if len(self.items) != self.index.ntotal:
            raise ValueError(
                f"image index {self.index_dir}: {len(self.items)} items but {self.index.ntotal} vectors"
            )
        self._embed_lock = threading.Lock()  # open_clip models are not guaranteed thread-safe

    def cache_params(self) -> dict[str, Any]:
        return {
            "index": str(self.index_dir.resolve()),
            "n": len(self.items),
            "embedder": self.embedder.spec(),
        }

    def search(self, query: ImageQuery, k: int) -> list[ImageHit]:
        if query.image is None:
            raise SearchError("local image search needs the query image itself (got only a url/key)")
        if k <= 0 or not self.items:
            return []
        try:
            img = query.image.load()
        except ValueError as e:
            raise SearchError(f"local image search: {e}") from None
        with self._embed_lock:
            vec = self.embedder.embed([img])
        scores, ids = self.index.search(np.ascontiguousarray(vec, dtype=np.float32), min(k, len(self.items)))
        hits = []
        for score, i in zip(scores[0].tolist(), ids[0].tolist(), strict=True):
            if i < 0:
                continue
            it = self.items[i]
            thumb = ImageData(bytes=(self.index_dir / it["thumb"]).read_bytes())
            hits.append(
                ImageHit(title=it["title"], url=it["url"], thumbnail=thumb, source="local", score=score)
            )
        return hits


IMAGE_BACKENDS.register("local")(LocalImageBackend)
