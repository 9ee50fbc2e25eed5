"""A fault-injecting HTTP proxy in front of a real search service, on 127.0.0.1 (tests and benchmarks).

`FaultProxy(upstream_url, rate=0.3, seed=0, delay_s=...)` forwards each request to the search service and, for
about a `rate` share of requests (decided by sha256 of the seed, the path, the body and, for transient faults,
how many times this body was sent before in the current generation), answers instead with one fault:
- `http_500`, `http_429`: an error status without a typed body (retryable for the service client);
- `timeout`: no answer for `delay_s` seconds (set it above the client's `timeout_s`), then the connection closes;
- `reset`: the connection is reset (RST) after the request is read, with no answer at all;
- `malformed_json`: a 200 whose body is not JSON (not retryable).
`malformed_json` is a property of the body (a `rate / 5` share of bodies get it every time, in every process),
so its outcome, a failed call, is the same wherever a run was killed. The transient faults (the other four) are
drawn per request, but never for a request whose previous attempt with the same body was faulted, so the
client's retry succeeds and the call's outcome does not depend on them. `new_generation()` (call it when a fresh
client process starts) resets the per-body history. Search outcomes therefore do not depend on where a run was
killed and resumed. `injected` counts the faults by
kind, over all generations; `/health` is never faulted.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

KINDS = ("http_500", "http_429", "timeout", "reset", "malformed_json")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: FaultProxy

    def handle_error(self, request: Any, client_address: Any) -> None:  # clients that gave up: quiet
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _answer(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        proxy = self.server.owner
        kind = proxy.decide(self.path, body)
        if kind == "http_500":
            self._answer(500, b"Internal Server Error", "text/plain")
        elif kind == "http_429":
            self._answer(429, b"Too Many Requests", "text/plain")
        elif kind == "malformed_json":
            self._answer(200, b'{"hits": [ not json')
        elif kind == "timeout":
            time.sleep(proxy.delay_s)
            self.close_connection = True
        elif kind == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
        else:
            headers = {
                k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")
            }
            r = proxy.http.request(self.command, self.path, content=body, headers=headers)
            self._answer(r.status_code, r.content, r.headers.get("content-type", "application/json"))

    do_GET = _handle
    do_POST = _handle


class FaultProxy:
    def __init__(self, upstream_url: str, *, rate: float = 0.3, seed: int = 0, delay_s: float = 1.0) -> None:
        self.rate = rate
        self.seed = seed
        self.delay_s = delay_s
        # no kept-alive upstream connections: one the service closed while idle would fail a forwarded request,
        # an error nobody injected
        self.http = httpx.Client(
            base_url=upstream_url,
            timeout=60.0,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self._seen: Counter[bytes] = Counter()
        self._faulted: dict[bytes, bool] = {}
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def decide(self, path: str, body: bytes) -> str | None:
        if path == "/health":
            return None
        h = hashlib.sha256(f"{self.seed}|{path}|".encode() + body).digest()
        with self._lock:
            self.requests += 1
            if int.from_bytes(h[:4], "big") / 2**32 < self.rate / len(KINDS):
                kind: str | None = "malformed_json"
            else:
                n = self._seen[h]
                d = hashlib.sha256(h + n.to_bytes(4, "big")).digest()
                hit = int.from_bytes(d[:4], "big") / 2**32 < self.rate and not self._faulted.get(h, False)
                kind = KINDS[d[4] % (len(KINDS) - 1)] if hit else None
                self._seen[h] = n + 1
                self._faulted[h] = kind is not None
            if kind is not None:
                self.injected[kind] += 1
            return kind

    def new_generation(self) -> None:
        with self._lock:
            self._seen.clear()
            self._faulted.clear()

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.http.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
