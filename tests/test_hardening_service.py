"""The search service against slow, lying and bulk clients, on a real uvicorn server on 127.0.0.1 (raw sockets).

Body limit with Content-Length + Transfer-Encoding, slow request heads and bodies, idle keep-alive connections,
the connection cap, and a decompression-bomb image."""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time

import httpx
import pytest

from _badimages import bomb_png
from mmsearch_r1.search.service import create_app
from mmsearch_r1.search.service_support import service_server
from test_search_service import DictReader, DictText, FirstSentence, SizeImages

LIMIT = 64 * 1024


@contextlib.contextmanager
def served(**limits):
    app = create_app(
        (DictText(), DictReader(), FirstSentence()),
        SizeImages(),
        token=None,
        max_request_bytes=LIMIT,
        body_timeout_s=limits.pop("body_timeout_s", 30.0),
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = service_server(app, log_level="warning", **limits)
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and th.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        th.join(10)
        sock.close()


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def _response(s: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            break
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data:
            head, _, body = data.partition(b"\r\n\r\n")
            n = next(
                (
                    int(h.split(b":")[1])
                    for h in head.split(b"\r\n")
                    if h.lower().startswith(b"content-length")
                ),
                0,
            )
            if len(body) >= n:
                break
    return data


def _closed_by_server(s: socket.socket, within_s: float) -> bool:
    s.settimeout(within_s)
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_content_length_with_chunked_body_is_refused_not_read() -> None:
    with served() as port:
        s = _connect(port)
        head = (
            b"POST /v1/read HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        s.sendall(head)
        chunk = b"x" * 32768
        sent = 0
        with contextlib.suppress(OSError):  # the server may close while we are still sending
            for _ in range(64):  # 2 MiB, 32 x the limit
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
            s.sendall(b"0\r\n\r\n")
        reply = _response(s)
        s.close()
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"Transfer-Encoding" in reply


def test_chunked_body_over_the_limit_is_cut_off_at_the_limit() -> None:
    with served() as port:
        s = _connect(port)
        s.sendall(b"POST /v1/read HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(OSError):
            for _ in range(64):
                s.sendall(b"8000\r\n" + b"y" * 0x8000 + b"\r\n")
        reply = _response(s)
        s.close()
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def test_partial_request_heads_are_closed_after_the_header_timeout() -> None:
    with served(header_timeout_s=0.5, idle_timeout_s=5.0) as port:
        socks = [_connect(port) for _ in range(20)]
        for s in socks:
            s.sendall(b"POST /v1/read HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        t0 = time.monotonic()
        closed = [_closed_by_server(s, 3.0) for s in socks]
        waited = time.monotonic() - t0
        for s in socks:
            s.close()
    assert all(closed) and waited < 3.0


def test_slow_body_gets_408_and_idle_keepalive_is_closed() -> None:
    with served(header_timeout_s=5.0, idle_timeout_s=0.5, body_timeout_s=0.6) as port:
        s = _connect(port)
        s.sendall(
            b"POST /v1/read HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        t0 = time.monotonic()
        with contextlib.suppress(OSError):
            for _ in range(20):  # one byte every 0.1 s: each arrives well within any per-read timeout
                s.sendall(b" ")
                time.sleep(0.1)
                if time.monotonic() - t0 > 1.5:
                    break
        reply = _response(s)
        s.close()
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:  # a kept-alive connection, then idle
            assert c.get("/health").status_code == 200
        s = _connect(port)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _response(s).startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        assert _closed_by_server(s, 3.0) and time.monotonic() - t0 < 2.0
        s.close()


def test_connections_beyond_the_cap_are_closed_and_admitted_ones_served() -> None:
    with served(header_timeout_s=5.0, max_connections=4) as port:
        held = [_connect(port) for _ in range(4)]
        time.sleep(0.3)
        extra = [_connect(port) for _ in range(3)]
        assert all(_closed_by_server(s, 2.0) for s in extra)
        held[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _response(held[0]).startswith(b"HTTP/1.1 200")
        for s in held + extra:
            s.close()
        time.sleep(0.3)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:  # freed slots are usable again
            assert c.get("/health").status_code == 200


def test_decompression_bomb_image_is_a_400_not_a_500() -> None:
    with served() as port:
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/image_search",
            json={"image_b64": base64.b64encode(bomb_png()).decode(), "k": 2},
            timeout=10,
        )
    assert r.status_code == 400 and "image_b64" in r.json()["error"]["message"]


@pytest.mark.parametrize("flag", ["--header-timeout-s=0", "--max-connections=0", "--idle-timeout-s=-1"])
def test_serve_flags_are_checked(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    from mmsearch_r1.cli import main

    assert main(["search", "serve", flag]) == 1
    assert flag.split("=")[0] in capsys.readouterr().err
