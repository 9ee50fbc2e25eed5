"""Support for the search service (`search/service.py`): error bodies, the ASGI guard, endpoint and component stats.

- `ServiceError(status, type, message, **extra)` and `map_backend_error(e, what)`: BackendStopped -> 503
  `backend_stopped`, SearchError -> 502 `search_error` (with `retryable`, `upstream_status`), anything else ->
  500 `internal_error` naming only the exception type (its message may hold anything).
- `GuardMiddleware`: bearer-token check (constant time; every path but /health) and the request-body limit
  (413 from Content-Length before any byte is read; a chunked body once it passes the limit), both before the
  app sees the body.
- `EndpointStats` (requests, errors by type, latency mean/p50/p99 over the last 1000) and `Served` (wraps one
  component, counting served_calls / served_errors / served_latency_s next to the component's own counters).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections import deque
from typing import Any

from mmsearch_r1.search.base import BackendStopped, Counters, SearchError

log = logging.getLogger(__name__)

# --- errors ------------------------------------------------------------------------------------------------


class ServiceError(Exception):
    """An error answer: HTTP status, error type and a message safe to show."""

    def __init__(self, status: int, type_: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.extra = extra


def error_body(type_: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"type": type_, "message": message, **extra}}


def map_backend_error(e: BaseException, what: str) -> ServiceError:
    if isinstance(e, ServiceError):
        return e
    if isinstance(e, BackendStopped):
        return ServiceError(503, "backend_stopped", f"{what}: {e}")
    if isinstance(e, SearchError):
        return ServiceError(
            502, "search_error", f"{what}: {e}", retryable=e.retryable, upstream_status=e.status
        )
    log.exception("%s: unexpected error", what)
    return ServiceError(500, "internal_error", f"{what}: internal error ({type(e).__name__})")


# --- ASGI guards: auth first, then the body size limit -----------------------------------------------------


async def _send_json(send: Any, status: int, body: dict[str, Any], headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": hdrs + (headers or [])})
    await send({"type": "http.response.body", "body": data})


class GuardMiddleware:
    """Bearer-token check (all paths but /health) and request-body size limit, before the app sees the body."""

    def __init__(self, app: Any, token: str | None, max_request_bytes: int, counters: Counters) -> None:
        self.app = app
        self._token = token.encode() if token else None
        self.max_bytes = max_request_bytes
        self.counters = counters

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self._token is not None and scope.get("path") != "/health":
            auth = headers.get(b"authorization", b"")
            scheme, _, given = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
                self.counters.incr("unauthorized")
                await _send_json(
                    send,
                    401,
                    error_body("unauthorized", "missing or wrong bearer token"),
                    [(b"www-authenticate", b"Bearer")],
                )
                return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                await _send_json(send, 400, error_body("bad_request", "bad Content-Length header"))
                return
            if n > self.max_bytes:
                await self._too_large(send, n)
                return
            await self.app(scope, receive, send)
            return
        # No Content-Length (chunked): buffer up to the limit, refuse as soon as it is passed.
        chunks: list[dict] = []
        total = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                chunks.append(msg)
                break
            total += len(msg.get("body", b""))
            if total > self.max_bytes:
                await self._too_large(send, None)
                return
            chunks.append(msg)
            if not msg.get("more_body", False):
                break

        async def replay() -> dict:
            return chunks.pop(0) if chunks else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Any, n: int | None) -> None:
        self.counters.incr("too_large")
        size = f"{n} bytes" if n is not None else "the body"
        await _send_json(
            send,
            413,
            error_body("too_large", f"request body too large: {size} > limit {self.max_bytes} bytes"),
            [(b"connection", b"close")],
        )


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class EndpointStats:
    """Per-endpoint request counts, errors and latency (total, max and the last 1000 for p50/p99)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._eps: dict[str, dict[str, Any]] = {}

    def record(self, endpoint: str, latency_s: float, error: str | None) -> None:
        with self._lock:
            e = self._eps.setdefault(
                endpoint, {"requests": 0, "errors": {}, "latency_s": deque(maxlen=1000), "total_s": 0.0}
            )
            e["requests"] += 1
            e["total_s"] += latency_s
            e["latency_s"].append(latency_s)
            if error:
                e["errors"][error] = e["errors"].get(error, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        out = {}
        with self._lock:
            for name, e in self._eps.items():
                lat = sorted(e["latency_s"])
                out[name] = {
                    "requests": e["requests"],
                    "errors": sum(e["errors"].values()),
                    "errors_by_type": dict(e["errors"]),
                    "latency_mean_s": e["total_s"] / max(1, e["requests"]),
                    "latency_p50_s": _quantile(lat, 0.5),
                    "latency_p99_s": _quantile(lat, 0.99),
                }
        return out


class Served:
    """Counts what the service asked of one component: served_calls, served_errors, served_latency_s."""

    def __init__(self, inner: Any, method: str) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", type(inner).__name__)
        self.served = Counters()
        self._fn = getattr(inner, method)
        setattr(self, method, self._call)

    def _call(self, *args: Any) -> Any:
        t0 = time.perf_counter()
        self.served.incr("served_calls")
        try:
            return self._fn(*args)
        except BaseException:
            self.served.incr("served_errors")
            raise
        finally:
            self.served.incr("served_latency_s", time.perf_counter() - t0)

    def stats(self) -> dict[str, Any]:
        c = getattr(self.inner, "counters", None)
        own = c.snapshot() if isinstance(c, Counters) else {}
        return {"name": self.name, **own, **self.served.snapshot()}
