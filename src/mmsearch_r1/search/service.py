"""The search service: one FastAPI app that serves both tools' backends to many rollout workers.

Many workers pointing their `"service"` client backends (`search/client.py`) at one server share its cache, its
in-flight collapse and its per-upstream concurrency limits. Endpoints (JSON in, JSON out):

- `POST /v1/search/text` `{query, k}` -> `{"hits": [{url, title, snippet, position, text}]}` (raw hits).
- `POST /v1/read` `{url}` -> `{url, title, text}` (the configured page reader).
- `POST /v1/summarize` `{page: {url, title, text}, question, query}` -> `{"summary": str}`.
- `POST /v1/text_search` `{query, k?, question?}` -> `{"hits": [{url, title, snippet, position, summary}],
  "candidates": n, "page_errors": [...]}`: the whole pipeline server-side with the text search tool's semantics:
  ask for `max_candidates` hits, summarize pages in waves of (k - summaries so far), fall back to further URLs
  until k summaries or the list runs out; hits but no summary at all is a 502 search error.
- `POST /v1/image_search` `{image_b64 | url, key?, k}` -> `{"hits": [{title, url, thumbnail_b64, thumbnail_url,
  source, score}]}`.
- `GET /health` (no auth) and `GET /stats`: per-endpoint request/error counts and latency, and every
  backend's own counters (calls, cache_hits, errors, retries, credits, tokens, ...).

Auth: with a token, every path but `/health` needs `Authorization: Bearer <token>` (constant-time compare);
else 401. A body over `max_request_bytes` is refused with 413, from its Content-Length before any of it is read,
or as soon as a streamed body passes the limit. Errors are `{"error": {"type", "message", ...}}`:
400/422 bad_request (names the field), 401 unauthorized, 404 not_configured/not_found, 413 too_large,
502 search_error (with `retryable`), 503 backend_stopped, 500 internal_error. The client maps them back to
`SearchError` / `BackendStopped`. Blocking backend calls run in a thread pool of `workers` threads.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from mmsearch_r1.search.base import (
    Counters,
    ImageQuery,
    Page,
    PageReader,
    SearchError,
    Summarizer,
    TextSearchBackend,
    WebHit,
)
from mmsearch_r1.search.cache import imagehits_to_json, webhits_to_json
from mmsearch_r1.search.service_support import (
    EndpointStats,
    GuardMiddleware,
    Served,
    ServiceError,
    error_body,
    map_backend_error,
)
from mmsearch_r1.types import ImageData

if TYPE_CHECKING:
    from fastapi import FastAPI

    from mmsearch_r1.config import SearchConfig
    from mmsearch_r1.search.base import ImageSearchBackend

log = logging.getLogger(__name__)

TextPipeline = tuple[TextSearchBackend, PageReader, Summarizer]
MAX_K = 50


# --- request bodies ----------------------------------------------------------------------------------------


class RawTextRequest(BaseModel):
    query: str = Field(min_length=1, max_length=2000)
    k: int = Field(default=10, ge=1, le=MAX_K)


class TextSearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=2000)
    k: int | None = Field(default=None, ge=1, le=MAX_K)
    question: str | None = Field(default=None, max_length=10_000)


class ReadRequest(BaseModel):
    url: str = Field(min_length=1, max_length=8000)


class PageBody(BaseModel):
    url: str = ""
    title: str = ""
    text: str


class SummarizeRequest(BaseModel):
    page: PageBody
    question: str = Field(default="", max_length=10_000)
    query: str = Field(default="", max_length=2000)


class ImageSearchRequest(BaseModel):
    image_b64: str | None = None
    url: str | None = Field(default=None, max_length=8000)
    key: str | None = Field(default=None, max_length=1000)
    k: int | None = Field(default=None, ge=1, le=MAX_K)


# --- the server-side text pipeline -------------------------------------------------------------------------


def summarized_search(
    pipeline: TextPipeline,
    query: str,
    question: str,
    k: int,
    *,
    max_candidates: int = 10,
    max_page_chars: int = 30_000,
    pool: ThreadPoolExecutor | None = None,
) -> dict[str, Any]:
    """search -> read -> summarize with fallback over further URLs (the text search tool's semantics).

    Returns `{"hits": [...], "candidates": n, "page_errors": [...]}`; raises the backend's SearchError when
    the search fails, and a SearchError when there were hits but no page could be summarized.
    """
    backend, reader, summarizer = pipeline
    hits: list[WebHit] = list(backend.search(query, max(k, max_candidates)))[: max(k, max_candidates)]

    def one(hit: WebHit) -> tuple[str | None, str | None]:
        try:
            page = Page(hit.url, hit.title, hit.text) if hit.text else reader.read(hit.url)
            capped = Page(page.url, page.title or hit.title, page.text[:max_page_chars])
            summary = summarizer.summarize(capped, question, query).strip()
        except Exception as e:  # a bad page is skipped; the next URL is tried
            return None, f"{type(e).__name__}: {e}"
        return (summary or None), (None if summary else "empty summary")

    done: list[tuple[int, str]] = []
    errors: list[str] = []
    nxt = 0
    while len(done) < k and nxt < len(hits):
        wave = list(range(nxt, min(len(hits), nxt + k - len(done))))
        nxt = wave[-1] + 1
        outs = list(pool.map(lambda i: one(hits[i]), wave)) if pool else [one(hits[i]) for i in wave]
        for i, (summary, err) in zip(wave, outs, strict=True):
            if summary is None:
                errors.append(f"{hits[i].url}: {err}")
            else:
                done.append((i, summary))
    if hits and not done:
        raise SearchError(f"could not read any of the {len(hits)} pages", retryable=False)
    out = []
    for i, summary in sorted(done):
        h = hits[i]
        out.append(
            {"url": h.url, "title": h.title, "snippet": h.snippet, "position": h.position, "summary": summary}
        )
    return {"hits": out, "candidates": len(hits), "page_errors": errors}


def _decode_image(b64: str) -> ImageData:
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError(400, "bad_request", "field 'image_b64': not valid base64") from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ServiceError(400, "bad_request", f"field 'image_b64': not a decodable image ({e})") from None
    return ImageData(bytes=raw)


def create_app(
    text_pipeline: TextPipeline | None,
    image_backend: ImageSearchBackend | None,
    *,
    token: str | None,
    max_request_bytes: int = 16 * 1024 * 1024,
    top_k: int = 5,
    max_candidates: int = 10,
    max_page_chars: int = 30_000,
    workers: int = 32,
) -> FastAPI:
    """The FastAPI app over the given components; `None` for a tool answers its endpoints with 404."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    if max_request_bytes < 1 or top_k < 1 or workers < 1:
        raise ValueError("create_app: max_request_bytes, top_k and workers must be >= 1")
    served: dict[str, Served] = {}
    if text_pipeline is not None:
        for role, comp, method in zip(
            ("text", "reader", "summarizer"), text_pipeline, ("search", "read", "summarize"), strict=True
        ):
            served[role] = Served(comp, method)
        text_pipeline = (served["text"], served["reader"], served["summarizer"])  # type: ignore[assignment]
    if image_backend is not None:
        served["image"] = Served(image_backend, "search")
        image_backend = served["image"]  # type: ignore[assignment]
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="search-svc")
    page_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="search-svc-page")
    stats = EndpointStats()
    guard_counters = Counters()

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        pool.shutdown(wait=False, cancel_futures=True)
        page_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="mmsearch-r1 search service", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.pool = pool

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            msgs.append(f"field '{loc or 'body'}': {err.get('msg', 'invalid')}")
        stats.record(request.url.path, 0.0, "bad_request")
        return JSONResponse(error_body("bad_request", "; ".join(msgs)), status_code=422)

    async def run(endpoint: str, what: str, fn: Any) -> JSONResponse:
        t0 = time.perf_counter()
        try:
            result = await asyncio.get_running_loop().run_in_executor(pool, fn)
        except BaseException as e:  # noqa: BLE001 - every failure becomes a JSON error
            err = map_backend_error(e, what)
            stats.record(endpoint, time.perf_counter() - t0, err.type)
            if err.status >= 500:
                log.warning("%s failed: %s", what, err)
            return JSONResponse(error_body(err.type, str(err), **err.extra), status_code=err.status)
        stats.record(endpoint, time.perf_counter() - t0, None)
        return JSONResponse(result)

    def need_text() -> TextPipeline:
        if text_pipeline is None:
            raise ServiceError(404, "not_configured", "this service has no text search backend")
        return text_pipeline

    def need_image() -> ImageSearchBackend:
        if image_backend is None:
            raise ServiceError(404, "not_configured", "this service has no image search backend")
        return image_backend

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "text": text_pipeline is not None, "image": image_backend is not None}

    @app.get("/stats")
    async def get_stats() -> dict[str, Any]:
        backends = {role: comp.stats() for role, comp in served.items()}
        return {"endpoints": stats.snapshot(), "guard": guard_counters.snapshot(), "backends": backends}

    @app.post("/v1/search/text")
    async def search_text(req: RawTextRequest) -> JSONResponse:
        def fn() -> dict[str, Any]:
            return {"hits": webhits_to_json(need_text()[0].search(req.query, req.k))}

        return await run("/v1/search/text", "text search", fn)

    @app.post("/v1/read")
    async def read(req: ReadRequest) -> JSONResponse:
        def fn() -> dict[str, Any]:
            page = need_text()[1].read(req.url)
            return {"url": page.url, "title": page.title, "text": page.text}

        return await run("/v1/read", "page read", fn)

    @app.post("/v1/summarize")
    async def summarize(req: SummarizeRequest) -> JSONResponse:
        def fn() -> dict[str, Any]:
            page = Page(req.page.url, req.page.title, req.page.text[:max_page_chars])
            return {"summary": need_text()[2].summarize(page, req.question, req.query)}

        return await run("/v1/summarize", "summarize", fn)

    @app.post("/v1/text_search")
    async def text_search(req: TextSearchRequest) -> JSONResponse:
        def fn() -> dict[str, Any]:
            return summarized_search(
                need_text(),
                " ".join(req.query.split()),
                req.question or req.query,
                req.k or top_k,
                max_candidates=max_candidates,
                max_page_chars=max_page_chars,
                pool=page_pool,
            )

        return await run("/v1/text_search", "text search", fn)

    @app.post("/v1/image_search")
    async def image_search(req: ImageSearchRequest) -> JSONResponse:
        if req.image_b64 is None and not req.url and not req.key:
            msg = "give one of the fields 'image_b64', 'url' or 'key'"
            stats.record("/v1/image_search", 0.0, "bad_request")
            return JSONResponse(error_body("bad_request", msg), status_code=422)

        def fn() -> dict[str, Any]:
            backend = need_image()
            image = _decode_image(req.image_b64) if req.image_b64 is not None else None
            query = ImageQuery(image=image, url=req.url, key=req.key)
            return {"hits": imagehits_to_json(backend.search(query, req.k or top_k))}

        return await run("/v1/image_search", "image search", fn)

    app.add_middleware(
        GuardMiddleware, token=token, max_request_bytes=max_request_bytes, counters=guard_counters
    )
    return app


def create_app_from_config(
    cfg: SearchConfig,
    *,
    token: str | None,
    max_request_bytes: int = 16 * 1024 * 1024,
    workers: int = 32,
    text: bool = True,
    image: bool = True,
) -> FastAPI:
    """`create_app` over the backends `search.factory` builds from `cfg` (cache, collapse, limits included)."""
    from mmsearch_r1.search.factory import build_image_backend, build_text_pipeline

    if text and cfg.text_backend.get("type") == "service":
        raise ValueError("search serve: text_backend.type 'service' would make the service call itself")
    if image and cfg.image_backend.get("type") == "service":
        raise ValueError("search serve: image_backend.type 'service' would make the service call itself")
    pipeline = build_text_pipeline(cfg) if text else None
    image_backend = build_image_backend(cfg) if image else None
    return create_app(
        pipeline,
        image_backend,
        token=token,
        max_request_bytes=max_request_bytes,
        top_k=cfg.top_k,
        workers=workers,
    )
