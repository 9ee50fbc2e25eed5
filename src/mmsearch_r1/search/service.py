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
or as soon as the bytes actually received pass the limit; Content-Length together with Transfer-Encoding is a
413 too; a body not received within `body_timeout_s` is a 408 (`service_support.GuardMiddleware`). Errors are
`{"error": {"type", "message", ...}}`: 400/422 bad_request (names the field), 401 unauthorized, 404
not_configured/not_found, 408 timeout, 413 too_large, 502 search_error (with `retryable`), 503 backend_stopped,
500 internal_error. The client maps them back to `SearchError` / `BackendStopped`. Blocking backend calls run in
a thread pool of `workers` threads.

Layout: `ServiceState` (the components, pools, stats and settings, on `app.state.svc`) and one plain route
function per endpoint (`ROUTES`); `create_app` only builds the state and registers them. `/v1/text_search` is
`search/text_pipeline.py`, the same pipeline the text search tool runs.
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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field
from starlette.requests import Request

from mmsearch_r1.search.base import (
    Counters,
    ImageQuery,
    Page,
    PageReader,
    SearchError,
    Summarizer,
    TextSearchBackend,
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
from mmsearch_r1.search.text_pipeline import run_text_pipeline
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
    """The one text pipeline (`search/text_pipeline.py`) as the JSON answer of `/v1/text_search`.

    Returns `{"hits": [...], "candidates": n, "page_errors": [...]}`; raises the backend's SearchError when
    the search fails, and a SearchError when there were hits but no page could be summarized.
    """
    res = run_text_pipeline(
        *pipeline, query, question, k, max_candidates=max_candidates, max_page_chars=max_page_chars, pool=pool
    )
    if res.hits and not res.summaries:
        raise SearchError(f"could not read any of the {len(res.hits)} pages", retryable=False)
    out = []
    for i, summary in res.summaries:
        h = res.hits[i]
        out.append(
            {"url": h.url, "title": h.title, "snippet": h.snippet, "position": h.position, "summary": summary}
        )
    return {"hits": out, "candidates": len(res.hits), "page_errors": res.errors}


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


# --- state and routes ---------------------------------------------------------------------------------------


@dataclass
class ServiceState:
    """Everything the routes need, kept on `app.state.svc` (no closures: each route is a plain function)."""

    text: TextPipeline | None
    image: ImageSearchBackend | None
    served: dict[str, Served]
    pool: ThreadPoolExecutor
    page_pool: ThreadPoolExecutor
    stats: EndpointStats = field(default_factory=EndpointStats)
    guard_counters: Counters = field(default_factory=Counters)
    top_k: int = 5
    max_candidates: int = 10
    max_page_chars: int = 30_000

    def need_text(self) -> TextPipeline:
        if self.text is None:
            raise ServiceError(404, "not_configured", "this service has no text search backend")
        return self.text

    def need_image(self) -> ImageSearchBackend:
        if self.image is None:
            raise ServiceError(404, "not_configured", "this service has no image search backend")
        return self.image

    async def run(self, endpoint: str, what: str, fn: Any) -> Any:
        """Run the blocking `fn` on the pool; every failure becomes a JSON error answer."""
        from fastapi.responses import JSONResponse

        t0 = time.perf_counter()
        try:
            result = await asyncio.get_running_loop().run_in_executor(self.pool, fn)
        except BaseException as e:  # noqa: BLE001 - every failure becomes a JSON error
            err = map_backend_error(e, what)
            self.stats.record(endpoint, time.perf_counter() - t0, err.type)
            if err.status >= 500:
                log.warning("%s failed: %s", what, err)
            return JSONResponse(error_body(err.type, str(err), **err.extra), status_code=err.status)
        self.stats.record(endpoint, time.perf_counter() - t0, None)
        return JSONResponse(result)


def _svc(request: Any) -> ServiceState:
    return request.app.state.svc


async def route_health(request: Request) -> dict[str, Any]:
    svc = _svc(request)
    return {"status": "ok", "text": svc.text is not None, "image": svc.image is not None}


async def route_stats(request: Request) -> dict[str, Any]:
    svc = _svc(request)
    backends = {role: comp.stats() for role, comp in svc.served.items()}
    return {"endpoints": svc.stats.snapshot(), "guard": svc.guard_counters.snapshot(), "backends": backends}


async def route_search_text(req: RawTextRequest, request: Request) -> Any:
    svc = _svc(request)

    def fn() -> dict[str, Any]:
        return {"hits": webhits_to_json(svc.need_text()[0].search(req.query, req.k))}

    return await svc.run("/v1/search/text", "text search", fn)


async def route_read(req: ReadRequest, request: Request) -> Any:
    svc = _svc(request)

    def fn() -> dict[str, Any]:
        page = svc.need_text()[1].read(req.url)
        return {"url": page.url, "title": page.title, "text": page.text}

    return await svc.run("/v1/read", "page read", fn)


async def route_summarize(req: SummarizeRequest, request: Request) -> Any:
    svc = _svc(request)

    def fn() -> dict[str, Any]:
        page = Page(req.page.url, req.page.title, req.page.text[: svc.max_page_chars])
        return {"summary": svc.need_text()[2].summarize(page, req.question, req.query)}

    return await svc.run("/v1/summarize", "summarize", fn)


async def route_text_search(req: TextSearchRequest, request: Request) -> Any:
    svc = _svc(request)

    def fn() -> dict[str, Any]:
        return summarized_search(
            svc.need_text(),
            " ".join(req.query.split()),
            req.question or req.query,
            req.k or svc.top_k,
            max_candidates=svc.max_candidates,
            max_page_chars=svc.max_page_chars,
            pool=svc.page_pool,
        )

    return await svc.run("/v1/text_search", "text search", fn)


async def route_image_search(req: ImageSearchRequest, request: Request) -> Any:
    from fastapi.responses import JSONResponse

    svc = _svc(request)
    if req.image_b64 is None and not req.url and not req.key:
        svc.stats.record("/v1/image_search", 0.0, "bad_request")
        msg = "give one of the fields 'image_b64', 'url' or 'key'"
        return JSONResponse(error_body("bad_request", msg), status_code=422)

    def fn() -> dict[str, Any]:
        backend = svc.need_image()
        image = _decode_image(req.image_b64) if req.image_b64 is not None else None
        query = ImageQuery(image=image, url=req.url, key=req.key)
        return {"hits": imagehits_to_json(backend.search(query, req.k or svc.top_k))}

    return await svc.run("/v1/image_search", "image search", fn)


async def _bad_request(request: Request, exc: Exception) -> Any:
    from fastapi.responses import JSONResponse

    msgs = []
    for err in exc.errors():  # type: ignore[attr-defined]
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msgs.append(f"field '{loc or 'body'}': {err.get('msg', 'invalid')}")
    _svc(request).stats.record(request.url.path, 0.0, "bad_request")
    return JSONResponse(error_body("bad_request", "; ".join(msgs)), status_code=422)


ROUTES: tuple[tuple[str, str, Any], ...] = (
    ("GET", "/health", route_health),
    ("GET", "/stats", route_stats),
    ("POST", "/v1/search/text", route_search_text),
    ("POST", "/v1/read", route_read),
    ("POST", "/v1/summarize", route_summarize),
    ("POST", "/v1/text_search", route_text_search),
    ("POST", "/v1/image_search", route_image_search),
)


def create_app(
    text_pipeline: TextPipeline | None,
    image_backend: ImageSearchBackend | None,
    *,
    token: str | None,
    max_request_bytes: int = 16 * 1024 * 1024,
    body_timeout_s: float = 30.0,
    top_k: int = 5,
    max_candidates: int = 10,
    max_page_chars: int = 30_000,
    workers: int = 32,
) -> FastAPI:
    """The FastAPI app over the given components; `None` for a tool answers its endpoints with 404."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError

    if max_request_bytes < 1 or top_k < 1 or workers < 1 or not body_timeout_s > 0:
        raise ValueError("create_app: max_request_bytes, top_k and workers must be >= 1, body_timeout_s > 0")
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
    svc = ServiceState(
        text=text_pipeline,
        image=image_backend,
        served=served,
        pool=ThreadPoolExecutor(max_workers=workers, thread_name_prefix="search-svc"),
        page_pool=ThreadPoolExecutor(max_workers=workers, thread_name_prefix="search-svc-page"),
        top_k=top_k,
        max_candidates=max_candidates,
        max_page_chars=max_page_chars,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        svc.pool.shutdown(wait=False, cancel_futures=True)
        svc.page_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="mmsearch-r1 search service", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.svc = svc
    app.state.pool = svc.pool
    app.add_exception_handler(RequestValidationError, _bad_request)
    for method, path, fn in ROUTES:
        app.add_api_route(path, fn, methods=[method])
    app.add_middleware(
        GuardMiddleware,
        token=token,
        max_request_bytes=max_request_bytes,
        body_timeout_s=body_timeout_s,
        counters=svc.guard_counters,
    )
    return app


def create_app_from_config(
    cfg: SearchConfig,
    *,
    token: str | None,
    max_request_bytes: int = 16 * 1024 * 1024,
    body_timeout_s: float = 30.0,
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
        body_timeout_s=body_timeout_s,
        top_k=cfg.top_k,
        workers=workers,
    )
