"""Support for the search service (`search/service.py`): error bodies, the ASGI guard, endpoint and component stats.

- `ServiceError(status, type, message, **extra)` and `map_backend_error(e, what)`: BackendStopped -> 503
  `backend_stopped`, SearchError -> 502 `search_error` (with `retryable`, `upstream_status`), anything else ->
  500 `internal_error` naming only the exception type (its message may hold anything).
- `GuardMiddleware`: bearer-token check (constant time; every path but /health) and the request body, read whole
  before the app sees it: 413 from Content-Length before any byte is read, 413 for Content-Length together with
  Transfer-Encoding, 413 as soon as the bytes actually received pass the limit, 408 when the body has not
  arrived within `body_timeout_s`.
- `service_server(app, ...)`: the uvicorn server for `search serve`, with the connection-level limits uvicorn
  lacks: a request head must arrive within `header_timeout_s` (also for each next request on a kept-alive
  connection), an idle kept-alive connection closes after `idle_timeout_s`, and connections beyond
  `max_connections` are closed as soon as they are accepted.
- `EndpointStats` (requests, errors by type, latency mean/p50/p99 over the last 1000) and `Served` (wraps one
  component, counting served_calls / served_errors / served_latency_s next to the component's own counters).
"""

from __future__ import annotations

import asyncio
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
    """Bearer-token check (all paths but /health), then the whole body read here, before the app sees it:

    - a request carrying both Content-Length and Transfer-Encoding is refused with 413 before any byte is read
      (the two disagree on where the body ends; h11 follows Transfer-Encoding, so Content-Length says nothing);
    - a Content-Length over the limit is refused with 413 before any byte is read;
    - the bytes actually received are counted whatever the headers say, and the request is refused with 413 as
      soon as they pass the limit;
    - the whole body must arrive within `body_timeout_s` of the head (a slow "slowloris" body gets 408).
    """

    def __init__(
        self,
        app: Any,
        token: str | None,
        max_request_bytes: int,
        counters: Counters,
        body_timeout_s: float = 30.0,
    ) -> None:
        self.app = app
        self._token = token.encode() if token else None
        self.max_bytes = max_request_bytes
        self.body_timeout_s = body_timeout_s
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
        if length is not None and b"transfer-encoding" in headers:
            await self._too_large(send, "Content-Length together with Transfer-Encoding is refused")
            return
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                await _send_json(send, 400, error_body("bad_request", "bad Content-Length header"))
                return
            if n > self.max_bytes:
                await self._too_large(
                    send, f"request body too large: {n} bytes > limit {self.max_bytes} bytes"
                )
                return
        chunks: list[dict] = []
        total = 0
        deadline = time.monotonic() + self.body_timeout_s
        while True:
            try:
                msg = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                self.counters.incr("body_timeout")
                await _send_json(
                    send,
                    408,
                    error_body("timeout", f"request body not received within {self.body_timeout_s:g} s"),
                    [(b"connection", b"close")],
                )
                return
            if msg["type"] != "http.request":
                chunks.append(msg)
                break
            total += len(msg.get("body", b""))
            if total > self.max_bytes:
                await self._too_large(send, f"request body too large: over limit {self.max_bytes} bytes")
                return
            chunks.append(msg)
            if not msg.get("more_body", False):
                break

        async def replay() -> dict:
            return chunks.pop(0) if chunks else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Any, message: str) -> None:
        self.counters.incr("too_large")
        await _send_json(send, 413, error_body("too_large", message), [(b"connection", b"close")])


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


# --- the server: header/idle timeouts and a connection cap ---------------------------------------------------


def _timed_protocol(header_timeout_s: float, max_connections: int) -> type:
    """uvicorn's h11 protocol with a request-head deadline and a cap on open connections."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self.transport.close()  # over the cap: closed before any byte is read
                return
            self._arm_head_timer()

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timeout)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and not self.transport.is_closing():
                self.transport.close()

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:  # a request head arrived
                self._cancel_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_timer()  # the next request's head has the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

    return TimedH11Protocol


def service_server(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    header_timeout_s: float = 10.0,
    idle_timeout_s: float = 5.0,
    max_connections: int = 256,
    log_level: str = "info",
) -> Any:
    """A `uvicorn.Server` for the app with the limits above (call `.run()`, or `.run(sockets=[...])`)."""
    import uvicorn

    if not header_timeout_s > 0 or not idle_timeout_s > 0 or max_connections < 1:
        raise ValueError("header_timeout_s and idle_timeout_s must be > 0, max_connections >= 1")
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_timed_protocol(header_timeout_s, max_connections),
        timeout_keep_alive=idle_timeout_s,
        # a request on an admitted connection is never refused with 503
        limit_concurrency=max_connections + 1,
        log_level=log_level,
        access_log=False,
        lifespan="on",
    )
    return uvicorn.Server(config)
