"""Client backends for the search service (`search/service.py`): many rollout workers, one cache, one rate limit.

Design: the text search tool takes a (backend, reader, summarizer) trio and runs the fallback-over-URLs logic
itself, so the client is the same trio, each part one remote call: `ServiceTextBackend.search` ->
`POST /v1/search/text`, `ServiceReader.read` -> `POST /v1/read`, `ServiceSummarizer.summarize` ->
`POST /v1/summarize`. All three are registered as `"service"` (text backend, reader, summarizer), and
`ServiceImageBackend` (`POST /v1/image_search`) as image backend `"service"`. The tool then behaves exactly as
with local components, while the server's cache, collapse and per-upstream limits are shared by every worker.
Callers outside the tool can make the whole pipeline one round trip with `ServiceClient.text_search(query, k,
question)` (`POST /v1/text_search`). A config using the service:

    search:
      text_backend:
        type: service
        url: http://127.0.0.1:8000
        cache: false
        reader: {type: service, url: "http://127.0.0.1:8000", cache: false}
        summarizer: {type: service, url: "http://127.0.0.1:8000", cache: false}
      image_backend: {type: service, url: "http://127.0.0.1:8000", cache: false}

Every component takes `url`, `token_env` (name of the environment variable holding the bearer token; default
`MMSEARCH_R1_SEARCH_TOKEN`, unset -> no token), `timeout_s` (read/write/pool timeout) and `connect_timeout_s`.
Components with the same url and token share one `ServiceClient`: one httpx connection pool (`max_connections`,
default 64) per process. The token is never logged nor put in errors.

Errors: timeouts, connection failures, 429 and 5xx without a typed body -> retryable `SearchError`; 401/403
(bad token) and `backend_stopped` (503) and `not_configured` (404) -> `BackendStopped`; `search_error` (502) ->
`SearchError` with the server's `retryable`; 4xx (bad request, 413 too large) -> non-retryable `SearchError`.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from typing import Any

import httpx

from mmsearch_r1.search.base import (
    IMAGE_BACKENDS,
    READERS,
    SUMMARIZERS,
    TEXT_BACKENDS,
    BackendStopped,
    Counters,
    ImageHit,
    ImageQuery,
    Page,
    SearchError,
    WebHit,
)
from mmsearch_r1.search.cache import imagehits_from_json, webhits_from_json

log = logging.getLogger(__name__)

DEFAULT_TOKEN_ENV = "MMSEARCH_R1_SEARCH_TOKEN"
_CLIENTS: dict[tuple[str, str | None, float, float, int], ServiceClient] = {}
_CLIENTS_LOCK = threading.Lock()


class ServiceClient:
    """One connection pool to a search service. Thread-safe; every method raises SearchError/BackendStopped."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = 64,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"search service url must start with http:// or https://, got {url!r}")
        if timeout_s <= 0 or connect_timeout_s <= 0 or max_connections < 1:
            raise ValueError("search service client: timeouts must be > 0 and max_connections >= 1")
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
            trust_env=False,
        )

    def __repr__(self) -> str:
        return f"ServiceClient({self.url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        what = f"search service {path}"
        try:
            r = self._http.request(method, path, json=body)
        except httpx.TimeoutException:
            raise SearchError(f"{what}: timed out", retryable=True) from None
        except httpx.TransportError as e:
            raise SearchError(
                f"{what}: cannot reach {self.url} ({type(e).__name__})", retryable=True
            ) from None
        try:
            data = r.json()
        except ValueError:
            data = None
        if r.status_code == 200:
            if data is None:
                raise SearchError(f"{what}: malformed JSON in the answer", retryable=False, status=200)
            return data
        err = data.get("error") if isinstance(data, dict) else None
        err = err if isinstance(err, dict) else {}
        typ = str(err.get("type", ""))
        msg = str(err.get("message", "")) or r.reason_phrase or "error"
        text = f"{what}: HTTP {r.status_code}: {msg}"
        if r.status_code in (401, 403) or typ in ("backend_stopped", "not_configured"):
            raise BackendStopped(text, status=r.status_code)
        if typ == "search_error":
            raise SearchError(text, retryable=bool(err.get("retryable", False)), status=r.status_code)
        if r.status_code == 429 or r.status_code >= 500:
            raise SearchError(text, retryable=True, status=r.status_code)
        raise SearchError(text, retryable=False, status=r.status_code)

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def stats(self) -> dict[str, Any]:
        return self._request("GET", "/stats")

    def search_text(self, query: str, k: int) -> list[WebHit]:
        return webhits_from_json(self._request("POST", "/v1/search/text", {"query": query, "k": k})["hits"])

    def read(self, url: str) -> Page:
        d = self._request("POST", "/v1/read", {"url": url})
        return Page(d["url"], d["title"], d["text"])

    def summarize(self, page: Page, question: str, query: str) -> str:
        body = {
            "page": {"url": page.url, "title": page.title, "text": page.text},
            "question": question,
            "query": query,
        }
        return str(self._request("POST", "/v1/summarize", body)["summary"])

    def text_search(self, query: str, k: int, question: str | None = None) -> list[dict[str, Any]]:
        """The whole pipeline server-side: hits `{url, title, snippet, position, summary}`, in result order."""
        body = {"query": query, "k": k, "question": question}
        return list(self._request("POST", "/v1/text_search", body)["hits"])

    def image_search(self, query: ImageQuery, k: int) -> list[ImageHit]:
        body: dict[str, Any] = {"k": k, "url": query.url, "key": query.key}
        if query.image is not None:
            raw = query.image.bytes
            if raw is None:
                if query.image.path is None:
                    raise SearchError("image query has no bytes and no path", retryable=False)
                with open(query.image.path, "rb") as f:
                    raw = f.read()
            body["image_b64"] = base64.b64encode(raw).decode("ascii")
        elif not query.url and not query.key:
            raise SearchError("image query has no image, url or key", retryable=False)
        return imagehits_from_json(self._request("POST", "/v1/image_search", body)["hits"])


def get_client(
    url: str,
    token_env: str | None = DEFAULT_TOKEN_ENV,
    *,
    timeout_s: float = 30.0,
    connect_timeout_s: float = 5.0,
    max_connections: int = 64,
) -> ServiceClient:
    """The process-wide client for (url, token, timeouts): components built from one config share a pool."""
    token = os.environ.get(token_env) if token_env else None
    key = (url.rstrip("/"), token, float(timeout_s), float(connect_timeout_s), int(max_connections))
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = ServiceClient(
                url,
                token,
                timeout_s=timeout_s,
                connect_timeout_s=connect_timeout_s,
                max_connections=max_connections,
            )
        return client


class _ServiceComponent:
    name = "service"

    def __init__(
        self,
        url: str,
        token_env: str | None = DEFAULT_TOKEN_ENV,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = 64,
    ) -> None:
        self.client = get_client(
            url,
            token_env,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_connections=max_connections,
        )
        self.counters = Counters()

    def cache_params(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.client.url}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.client.url!r})"

    def _counted(self, fn: Any, *args: Any) -> Any:
        self.counters.incr("calls")
        try:
            return fn(*args)
        except SearchError:
            self.counters.incr("errors")
            raise


class ServiceTextBackend(_ServiceComponent):
    """Text backend `"service"`: raw hits from the service's text backend."""

    def search(self, query: str, k: int) -> list[WebHit]:
        return self._counted(self.client.search_text, query, k)


class ServiceReader(_ServiceComponent):
    """Reader `"service"`: page text from the service's reader."""

    def read(self, url: str) -> Page:
        return self._counted(self.client.read, url)


class ServiceSummarizer(_ServiceComponent):
    """Summarizer `"service"`: a summary from the service's summarizer."""

    def summarize(self, page: Page, question: str, query: str) -> str:
        return self._counted(self.client.summarize, page, question, query)


class ServiceImageBackend(_ServiceComponent):
    """Image backend `"service"`: hits with thumbnails from the service's image backend."""

    def search(self, query: ImageQuery, k: int) -> list[ImageHit]:
        return self._counted(self.client.image_search, query, k)


def service_text_pipeline(
    url: str, token_env: str | None = DEFAULT_TOKEN_ENV, **options: Any
) -> tuple[ServiceTextBackend, ServiceReader, ServiceSummarizer]:
    """(backend, reader, summarizer) against one service, sharing one connection pool."""
    return (
        ServiceTextBackend(url, token_env, **options),
        ServiceReader(url, token_env, **options),
        ServiceSummarizer(url, token_env, **options),
    )


TEXT_BACKENDS.register("service")(ServiceTextBackend)
READERS.register("service")(ServiceReader)
SUMMARIZERS.register("service")(ServiceSummarizer)
IMAGE_BACKENDS.register("service")(ServiceImageBackend)
