"""Threaded HTTP test servers on loopback (127.0.0.0/8 only), for tests that need a real server.

    def handler(req: Request) -> Reply:
        return Reply(json={"ok": True})

    with LoopbackServer(handler) as srv:          # binds 127.0.0.1 on a free port
        httpx.get(srv.url + "/x?a=1")
        assert srv.hits == 1 and srv.requests[0].query == {"a": "1"}

`Reply(delay_s=...)` sleeps before answering (timeouts); `srv.connections` counts accepted TCP connections
(refused-before-connect checks); `host="127.0.0.2"` gives a second loopback address. The handler runs in the
server's threads; `srv.lock` guards state the handler keeps.
"""

from __future__ import annotations

import json as json_lib
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    raw_path: str


@dataclass
class Reply:
    status: int = 200
    body: bytes | str = b""
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    delay_s: float = 0.0

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        if self.json is not None:
            body = json_lib.dumps(self.json).encode()
            headers.setdefault("Content-Type", "application/json")
        else:
            body = self.body.encode() if isinstance(self.body, str) else self.body
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        return body, headers


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: LoopbackServer

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self.owner.lock:
            self.owner.connections += 1
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:  # client went away (timeouts): quiet
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in separate writes: without this, 40 ms delayed-ACK stalls per request
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def _handle(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        req = Request(
            method=self.command,
            path=parts.path,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            raw_path=self.path,
        )
        with owner.lock:
            owner.requests.append(req)
        reply = owner.handler(req)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        data, headers = reply.encoded()
        try:
            self.send_response(reply.status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = do_POST = do_PUT = do_DELETE = _handle


class LoopbackServer:
    """A real HTTP/1.1 server on a loopback address, answering with `handler(Request) -> Reply`."""

    def __init__(
        self, handler: Callable[[Request], Reply], host: str = "127.0.0.1", tls: tuple[str, str] | None = None
    ) -> None:
        """`tls=(certfile, keyfile)` serves HTTPS; the SNI names clients sent are kept in `sni`."""
        if not host.startswith("127."):
            raise ValueError("test servers must bind a 127.0.0.0/8 address")
        self.handler = handler
        self.host = host
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.connections = 0
        self._server = _Server((host, 0), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self.scheme = "https" if tls else "http"
        self.sni: list[str | None] = []
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            ctx.sni_callback = lambda sock, name, c: self.sni.append(name)
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def hits(self) -> int:
        with self.lock:
            return len(self.requests)

    def start(self) -> LoopbackServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
