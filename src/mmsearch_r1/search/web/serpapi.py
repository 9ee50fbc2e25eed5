"""SerpApi backends: `"serpapi_google"` (text search) and `"serpapi_lens"` (Google Lens image search).

Both send `GET {base_url}?engine=...&api_key=...` (the key only ever goes into that one request; it never
reaches a log, an exception, a cache key or a repr). Error mapping (SerpApi's documented codes):
- 401 / 403 -> `BackendStopped` (bad key / forbidden); every later call fails fast without a request;
- 429 "Your account has run out of searches." -> `BackendStopped`; any other 429 (hourly throughput) ->
  retryable; 500 / 503 (and any 5xx) -> retryable; 400 and other 4xx -> non-retryable `SearchError`;
- a 200 whose `error` says Google returned no results -> an empty list (not a failure);
- malformed JSON -> non-retryable `SearchError`.
Credits: one per successful search (failed searches are not charged).

Lens: searches by `url=` when the `ImageQuery` has a url; otherwise uploads the image bytes to
`upload_url` (multipart field `upload_field`, JPG/PNG/WebP re-encoded/downscaled to fit `upload_max_bytes`),
reads the returned reference (`image_id`, or a `url`) and searches with it. The upload endpoint is configurable
because SerpApi documents uploads only loosely; point it at your own uploader if needed. The SerpApi key is sent
to the upload endpoint only when it has SerpApi's own origin (the `base_url`'s scheme, host and port); your own
uploader never receives it. `visual_matches` are
sorted by `position` (which may have gaps), sliced to k, and each thumbnail is downloaded with the SSRF-safe
fetcher (image types only, byte cap, must decode); a thumbnail that fails is dropped and its title kept.
Google: `engine=google`, `q`, optional `gl`/`hl`/`location`/`safe`; no `num` (first page, sliced to k).
"""

from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from mmsearch_r1.search.base import (
    IMAGE_BACKENDS,
    TEXT_BACKENDS,
    BackendStopped,
    Counters,
    ImageHit,
    ImageQuery,
    SearchError,
    WebHit,
)
from mmsearch_r1.search.web._http import (
    ApiHttp,
    UpstreamGuard,
    api_key_from,
    error_text,
    json_or_error,
    stop_or_raise,
)
from mmsearch_r1.search.web.fetch import SafeFetcher
from mmsearch_r1.types import ImageData

log = logging.getLogger(__name__)

DEFAULT_URL = "https://serpapi.com/search.json"
OUT_OF_SEARCHES = "run out of searches"
NO_RESULTS = "returned any results"  # "Google hasn't returned any results for this query."


class _SerpApi:
    """Shared client: one GET to SerpApi with the documented error mapping and the stop latch."""

    upstream = "serpapi"

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        api_key_env: str = "SERPAPI_API_KEY",
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        extra_params: dict[str, Any] | None = None,
        counters: Counters | None = None,
    ) -> None:
        self.base_url = base_url
        self._key = api_key_from(api_key, api_key_env, required=True, service="serpapi")
        self.extra_params = {k: v for k, v in (extra_params or {}).items() if v is not None}
        if "api_key" in self.extra_params:
            raise ValueError("serpapi: pass the key via api_key/api_key_env, not extra_params")
        self.http = ApiHttp("serpapi", connect_timeout_s=connect_timeout_s, timeout_s=timeout_s)
        self.counters = counters or Counters()
        self.guard = UpstreamGuard(self.counters)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, params={self.extra_params})"

    def _check_stopped(self) -> None:
        self.guard.check()

    def _get(self, params: dict[str, Any]) -> dict[str, Any]:
        """One search request; returns the JSON body of a successful search (or raises)."""
        return self.guard.call(self._get_once, params)

    def _get_once(self, params: dict[str, Any]) -> dict[str, Any]:
        query = {**self.extra_params, **params, "api_key": self._key.value, "output": "json"}
        resp = self.http.send("GET", self.base_url, params=query)
        status = resp.status_code
        if status == 200:
            data = json_or_error(resp, "serpapi")
            if not isinstance(data, dict):
                raise SearchError("serpapi: response is not a JSON object", status=status)
            err = error_text(data)
            if err:
                if NO_RESULTS in err.lower() or "no results" in err.lower():
                    return {}
                raise SearchError(f"serpapi: search failed: {err}", status=status)
            self.counters.incr("credits")
            return data
        try:
            msg = error_text(resp.json())
        except ValueError:
            msg = ""
        if status in (401, 403):
            raise stop_or_raise("serpapi", status, msg or "invalid API key", stop=True, retryable=False)
        if status == 429:
            out = OUT_OF_SEARCHES in msg.lower()
            raise stop_or_raise("serpapi", status, msg, stop=out, retryable=not out)
        raise stop_or_raise("serpapi", status, msg, stop=False, retryable=status >= 500)


class SerpApiGoogle(_SerpApi):
    """Text search through SerpApi's Google engine (first page of organic results, sliced to k)."""

    def __init__(
        self,
        *,
        gl: str | None = None,
        hl: str | None = None,
        location: str | None = None,
        safe: str | None = None,
        timeout_s: float = 30.0,
        **kwargs: Any,
    ) -> None:
        extra = {"gl": gl, "hl": hl, "location": location, "safe": safe, **kwargs.pop("extra_params", {})}
        super().__init__(extra_params=extra, timeout_s=timeout_s, **kwargs)
        self.name = "serpapi_google"

    def cache_params(self) -> dict[str, Any]:
        return {"engine": "google", **self.extra_params}

    def search(self, query: str, k: int) -> list[WebHit]:
        if not query.strip():
            raise SearchError("serpapi_google: empty query")
        data = self._get({"engine": "google", "q": query})
        hits: list[WebHit] = []
        for i, r in enumerate(data.get("organic_results") or []):
            if not isinstance(r, dict) or not r.get("link"):
                continue
            hits.append(
                WebHit(
                    url=str(r["link"]),
                    title=str(r.get("title") or ""),
                    snippet=str(r.get("snippet") or ""),
                    position=_int(r.get("position"), i + 1),
                )
            )
        hits.sort(key=lambda h: h.position)
        return hits[:k]


class SerpApiLens(_SerpApi):
    """Image search through Google Lens; thumbnails downloaded with the SSRF-safe fetcher."""

    def __init__(
        self,
        *,
        hl: str | None = None,
        country: str | None = None,
        safe: str | None = None,
        lens_type: str | None = "visual_matches",
        upload_url: str | None = None,
        upload_field: str = "image",
        upload_max_bytes: int = 500_000,
        fetch: dict[str, Any] | None = None,
        thumbnail_workers: int = 5,
        timeout_s: float = 30.0,
        **kwargs: Any,
    ) -> None:
        extra = {
            "hl": hl,
            "country": country,
            "safe": safe,
            "type": lens_type,
            **kwargs.pop("extra_params", {}),
        }
        super().__init__(extra_params=extra, timeout_s=timeout_s, **kwargs)
        self.name = "serpapi_lens"
        self.upload_url = upload_url
        # the key goes only to SerpApi itself: an uploader on another origin (your own) never receives it
        self._upload_is_serpapi = bool(upload_url) and _origin(upload_url) == _origin(self.base_url)
        self.upload_field = upload_field
        self.upload_max_bytes = upload_max_bytes
        self.fetcher = SafeFetcher(**(fetch or {}))
        self.thumbnail_workers = thumbnail_workers

    def cache_params(self) -> dict[str, Any]:
        return {"engine": "google_lens", **self.extra_params}

    def search(self, query: ImageQuery, k: int) -> list[ImageHit]:
        self._check_stopped()
        if query.url:
            params = {"engine": "google_lens", "url": query.url}
        elif query.image is not None:
            params = {"engine": "google_lens", **self._upload(query.image)}
        else:
            raise SearchError("serpapi_lens: the image query has neither a url nor image bytes")
        data = self._get(params)
        matches = [m for m in (data.get("visual_matches") or []) if isinstance(m, dict)]
        matches.sort(key=lambda m: _int(m.get("position"), 10**9))
        hits = [
            ImageHit(
                title=str(m.get("title") or ""),
                url=str(m.get("link") or ""),
                thumbnail_url=str(m.get("thumbnail") or "") or None,
                source=str(m.get("source") or ""),
                score=_float(m.get("rating")),
            )
            for m in matches[:k]
        ]
        todo = [h for h in hits if h.thumbnail_url]
        if todo:
            with ThreadPoolExecutor(max_workers=max(1, min(self.thumbnail_workers, len(todo)))) as pool:
                for hit, img in zip(todo, pool.map(self._thumbnail, todo), strict=True):
                    hit.thumbnail = img
        return hits

    def _thumbnail(self, hit: ImageHit) -> ImageData | None:
        assert hit.thumbnail_url is not None
        try:
            res = self.fetcher.fetch(hit.thumbnail_url, "image")
            img = ImageData(bytes=res.body, url=hit.thumbnail_url)
            img.load()
            return img
        except (SearchError, ValueError) as e:
            self.counters.incr("thumbnail_errors")
            log.info("serpapi_lens: dropped thumbnail of %r: %s", hit.title[:80], e)
            return None

    def _upload(self, image: ImageData) -> dict[str, str]:
        if not self.upload_url:
            raise SearchError("serpapi_lens: the image query has no url and no upload_url is configured")
        payload, mime = fit_for_upload(image, self.upload_max_bytes)
        self.counters.incr("uploads")
        resp = self.http.send(
            "POST",
            self.upload_url,
            params={"api_key": self._key.value} if self._upload_is_serpapi else None,
            files={self.upload_field: ("image" + _EXT[mime], payload, mime)},
        )
        if resp.status_code != 200:
            msg = ""
            try:
                msg = error_text(resp.json())
            except ValueError:
                pass
            stop = resp.status_code in (401, 403)
            self.counters.incr("errors")
            err = stop_or_raise(
                "serpapi upload", resp.status_code, msg, stop=stop, retryable=resp.status_code >= 500
            )
            if isinstance(err, BackendStopped):
                self.guard.stop(err)
            raise err
        data = json_or_error(resp, "serpapi upload")
        ref = data.get("image_id") if isinstance(data, dict) else None
        if ref:
            return {"image_id": str(ref)}
        url = data.get("url") or data.get("image_url") if isinstance(data, dict) else None
        if url:
            return {"url": str(url)}
        raise SearchError("serpapi upload: response has no image_id or url")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port or default


_EXT = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp"}


def fit_for_upload(image: ImageData, max_bytes: int) -> tuple[bytes, str]:
    """Bytes + MIME type for an upload: the original if JPG/PNG/WebP and small enough, else a JPEG re-encode,
    downscaled (by 0.75 per step) until it fits max_bytes."""
    from PIL import Image

    if image.bytes is not None and len(image.bytes) <= max_bytes:
        try:
            fmt = Image.open(io.BytesIO(image.bytes)).format
        except Exception:  # noqa: BLE001 - undecodable: load() below gives the clear error
            fmt = None
        mime = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}.get(fmt or "")
        if mime:
            return image.bytes, mime
    img = image.load()
    quality = 90
    for _ in range(20):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        if buf.tell() <= max_bytes:
            return buf.getvalue(), "image/jpeg"
        quality = max(60, quality - 10)
        if quality == 60:
            img = img.resize((max(1, int(img.width * 0.75)), max(1, int(img.height * 0.75))))
    raise SearchError(f"serpapi_lens: cannot fit the image under {max_bytes} bytes")


def _int(v: Any, default: int) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def _float(v: Any) -> float | None:
    try:
        return float(str(v).replace(",", "."))
    except (TypeError, ValueError):
        return None


TEXT_BACKENDS.register("serpapi_google")(SerpApiGoogle)
IMAGE_BACKENDS.register("serpapi_lens")(SerpApiLens)
