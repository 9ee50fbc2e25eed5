"""Convert a released image-search cache pickle to JSON + image files, without running untrusted code.

The FVQA release ships its cached Google Lens results as pickles keyed by `data_id`: page titles and
thumbnails (URL strings, or images). Unpickling an untrusted file can run arbitrary code, so `SafeUnpickler`
admits only the globals needed to rebuild that data (containers and primitives, PIL images, numpy arrays) and
refuses anything else with `UnsafePickleError` before it is called.

Output layout (read by the `replay` image backend via `load_image_cache`):
    OUT_DIR/manifest.jsonl   one line per key:
        {"key": str, "results": [{"title": str, "thumbnail": "images/<name>.png" | null,
                                  "thumbnail_url": str | null, "url": str | null}]}
    OUT_DIR/images/          the thumbnails that were images in the pickle, as PNG

The output is written to a temporary directory and renamed into place only when the whole run succeeded, so a
bad thumbnail never leaves a partial manifest behind and never destroys a good existing output. A key that cannot
be converted fails the run (`BadCacheItem`, naming the key and the reason), or with `skip_bad=True` is left out
and counted.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_ALLOWED: dict[str, set[str]] = {
    "builtins": {
        "set",
        "frozenset",
        "bytearray",
        "list",
        "dict",
        "tuple",
        "str",
        "bytes",
        "int",
        "float",
        "bool",
        "object",  # copyreg._reconstructor(cls, object, state): protocol 0/1 pickles of PIL images
    },
    "collections": {"OrderedDict"},
    "_codecs": {"encode"},  # protocol-2 encoding of bytes
    "copyreg": {"_reconstructor"},
    "PIL.Image": {"Image"},
    "PIL.JpegImagePlugin": {"JpegImageFile"},
    "PIL.PngImagePlugin": {"PngImageFile"},
    "PIL.WebPImagePlugin": {"WebPImageFile"},
    "PIL.GifImagePlugin": {"GifImageFile"},
    "PIL.MpoImagePlugin": {"MpoImageFile"},
    "numpy": {"ndarray", "dtype"},
    "numpy.core.multiarray": {"_reconstruct", "scalar"},
    "numpy._core.multiarray": {"_reconstruct", "scalar"},
    "numpy._core.numeric": {"_frombuffer"},
    "numpy.core.numeric": {"_frombuffer"},
}
_ALLOWED_NUMPY_DTYPE_MODULES = ("numpy.dtypes",)


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """Protocol 0-2 pickles name globals by their Python 2 names (`__builtin__`, `copy_reg`, `commands`...)."""
    import _compat_pickle

    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class UnsafePickleError(ValueError):
    """The pickle asked for a global outside the allow-list; nothing was called."""


class SafeUnpickler(pickle.Unpickler):
    """Unpickler whose `find_class` admits only the allow-listed globals (checked before anything is called)."""

    def find_class(self, module: str, name: str) -> Any:
        checked, name = _py3_name(module, name)
        if name in _ALLOWED.get(checked, ()) or (
            checked in _ALLOWED_NUMPY_DTYPE_MODULES and name.endswith("DType")
        ):
            return super().find_class(checked, name)
        raise UnsafePickleError(
            f"refused to load global {checked}.{name}: the image-cache converter admits only containers, "
            "strings, numbers, bytes, PIL images and numpy arrays"
        )


def safe_load(path: str | Path) -> Any:
    with open(path, "rb") as f:
        try:
            return SafeUnpickler(f).load()
        except UnsafePickleError:
            raise
        except Exception as e:  # truncated or corrupt file
            raise ValueError(f"{path}: not a readable pickle ({e.__class__.__name__}: {e})") from None


_TITLE_KEYS = ("titles", "title", "page_titles")
_THUMB_KEYS = ("thumbnails", "thumbnail", "images", "image", "thumbnail_urls")
_URL_KEYS = ("urls", "links", "link", "page_urls")


def _pick(d: dict, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if k in d:
            return d[k]
    return None


def _as_list(x: Any) -> list:
    if x is None:
        return []
    if isinstance(x, (str, bytes)) or not hasattr(x, "__iter__"):
        return [x]
    if hasattr(x, "ndim") and getattr(x, "ndim", 1) == 3:  # one HxWxC array is one image
        return [x]
    return list(x)


def _entry(key: str, value: Any) -> tuple[list, list, list]:
    if isinstance(value, dict):
        titles, thumbs, urls = _pick(value, _TITLE_KEYS), _pick(value, _THUMB_KEYS), _pick(value, _URL_KEYS)
    elif isinstance(value, (list, tuple)) and len(value) in (2, 3):
        titles, thumbs = value[0], value[1]
        urls = value[2] if len(value) == 3 else None
    else:
        raise ValueError(
            f"key {key!r}: expected a dict or a (titles, thumbnails) pair, got {type(value).__name__}"
        )
    return _as_list(titles), _as_list(thumbs), _as_list(urls)


def _to_pil(x: Any):
    from PIL import Image

    if isinstance(x, Image.Image):
        return x
    if isinstance(x, (bytes, bytearray)):
        return Image.open(io.BytesIO(bytes(x)))
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        import numpy as np

        arr = np.asarray(x)
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(arr)
    return None


def _safe_name(key: str, i: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:60] or "key"
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return f"{stem}-{digest}-{i}.png"


class BadCacheItem(ValueError):
    """One key of the cache cannot be converted (an undecodable thumbnail, a bad entry); names the key."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"key {key!r}: {reason}")
        self.key = key
        self.reason = reason


def _convert_key(key: str, value: Any, images_dir: Path, counts: dict[str, int]) -> list[dict[str, Any]]:
    """The results of one key, its thumbnails written to images_dir; BadCacheItem if anything in it is bad."""
    try:
        titles, thumbs, urls = _entry(key, value)
    except ValueError as e:
        raise BadCacheItem(key, str(e).removeprefix(f"key {key!r}: ")) from None
    results = []
    written: list[Path] = []
    try:
        for i in range(max(len(titles), len(thumbs))):
            title = str(titles[i]) if i < len(titles) and titles[i] is not None else ""
            th = thumbs[i] if i < len(thumbs) else None
            url = urls[i] if i < len(urls) and isinstance(urls[i], str) else None
            rec: dict[str, Any] = {"title": title, "thumbnail": None, "thumbnail_url": None, "url": url}
            if isinstance(th, str):
                rec["thumbnail_url"] = th
            elif th is not None:
                try:
                    img = _to_pil(th)
                    if img is None:
                        raise ValueError(f"unsupported thumbnail type {type(th).__name__}")
                    name = _safe_name(key, i)
                    img.convert("RGB").save(images_dir / name, format="PNG")
                except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad image
                    raise BadCacheItem(
                        key, f"result {i}: undecodable thumbnail ({type(e).__name__}: {e})"
                    ) from None
                written.append(images_dir / name)
                rec["thumbnail"] = f"images/{name}"
            results.append(rec)
    except BadCacheItem:
        for f in written:  # a skipped key leaves no images behind
            f.unlink(missing_ok=True)
        raise
    counts["images"] += len(written)
    counts["thumbnail_urls"] += sum(r["thumbnail_url"] is not None for r in results)
    return results


def convert_image_cache(
    in_path: str | Path, out_dir: str | Path, *, skip_bad: bool = False, bad: list[BadCacheItem] | None = None
) -> dict[str, int]:
    """Convert the pickle at `in_path` into `out_dir`; returns counts (keys, results, images, thumbnail_urls,
    skipped).

    Atomic: everything is written to a temporary directory next to `out_dir`, which replaces `out_dir` only when
    the whole conversion succeeded; a failed run leaves an existing `out_dir` as it was. A key that cannot be
    converted raises `BadCacheItem` (naming the key and the reason), or with `skip_bad` is left out, counted in
    `skipped` and appended to `bad`.
    """
    data = safe_load(in_path)
    if not isinstance(data, dict):
        raise ValueError(f"{in_path}: expected a dict keyed by data_id, got {type(data).__name__}")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    counts = {"keys": 0, "results": 0, "images": 0, "thumbnail_urls": 0, "skipped": 0}
    try:
        (tmp / "images").mkdir()
        with open(tmp / "manifest.jsonl", "w", encoding="utf-8") as mf:
            for key, value in data.items():
                key = str(key)
                try:
                    results = _convert_key(key, value, tmp / "images", counts)
                except BadCacheItem as e:
                    if not skip_bad:
                        raise
                    counts["skipped"] += 1
                    if bad is not None:
                        bad.append(e)
                    log.warning("skipped %s", e)
                    continue
                mf.write(json.dumps({"key": key, "results": results}, ensure_ascii=False) + "\n")
                counts["keys"] += 1
                counts["results"] += len(results)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("converted %s -> %s: %s", in_path, out, counts)
    return counts


def _replace_dir(new: Path, out: Path) -> None:
    """Put directory `new` at `out`: renames only, an existing `out` is removed after the swap."""
    if not out.exists():
        new.rename(out)
        return
    if not out.is_dir():
        raise ValueError(f"{out}: exists and is not a directory")
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old.rmdir()
    out.rename(old)
    try:
        new.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def load_image_cache(out_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Read a converted cache: key -> list of results (see the module docstring)."""
    manifest = Path(out_dir) / "manifest.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"no manifest.jsonl in {out_dir}")
    out: dict[str, list[dict[str, Any]]] = {}
    with open(manifest, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                out[str(rec["key"])] = list(rec["results"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{manifest} line {n}: bad record ({e})") from None
    return out
