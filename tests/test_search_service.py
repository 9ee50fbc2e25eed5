"""The search service against a real uvicorn server on 127.0.0.1 (random free port, stopped at the end):
auth, body limits, validation, health/stats, round trips through the `"service"` client backends, and the
mapping of backend failures back to SearchError / BackendStopped."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from PIL import Image

from mmsearch_r1.search.base import (
    BackendStopped,
    Counters,
    ImageHit,
    ImageQuery,
    Page,
    SearchError,
    WebHit,
)
from mmsearch_r1.search.client import (
    ServiceClient,
    ServiceImageBackend,
    ServiceReader,
    ServiceSummarizer,
    ServiceTextBackend,
    service_text_pipeline,
)
from mmsearch_r1.search.service import create_app
from mmsearch_r1.tools.text_search import TextSearchTool
from mmsearch_r1.types import Answers, ImageData, Sample

TOKEN = "s3cret-token-for-tests"
TOKEN_ENV = "MMSEARCH_TEST_SERVICE_TOKEN"


@contextlib.contextmanager
def serve(app):
    """Run `app` on uvicorn in a thread on 127.0.0.1:<free port>; yields the base url."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not th.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        th.join(10)
        sock.close()


# --- simple backends defined here ---------------------------------------------------------------------------

PAGES = {
    "http://p/1": ("Eiffel Tower", "The Eiffel Tower is in Paris. It was completed in 1889. It is iron."),
    "http://p/2": ("Broken page", None),  # the reader fails on it
    "http://p/3": ("Louvre", "The Louvre is a museum in Paris. It holds the Mona Lisa."),
    "http://p/4": ("Seine", "The Seine flows through Paris. It is 777 km long."),
}


class DictText:
    name = "dict"

    def __init__(self) -> None:
        self.counters = Counters()
        self.fail: Exception | None = None

    def search(self, query: str, k: int) -> list[WebHit]:
        self.counters.incr("calls")
        if self.fail is not None:
            self.counters.incr("errors")
            raise self.fail
        words = set(query.lower().split())
        hits = []
        for url, (title, text) in PAGES.items():
            if words & set((title + " " + (text or "")).lower().replace(".", "").split()) or "paris" in words:
                # page 4 carries its text (like local backends); the others must be read
                hits.append(
                    WebHit(url, title, f"snippet of {title}", len(hits) + 1, text if url[-1] == "4" else None)
                )
        return hits[:k]


class DictReader:
    name = "dictreader"

    def __init__(self) -> None:
        self.counters = Counters()

    def read(self, url: str) -> Page:
        self.counters.incr("calls")
        title, text = PAGES.get(url, ("", None))
        if text is None:
            self.counters.incr("errors")
            raise SearchError(f"cannot read {url}", retryable=False)
        return Page(url, title, text)


class FirstSentence:
    name = "first"

    def __init__(self) -> None:
        self.counters = Counters()

    def summarize(self, page: Page, question: str, query: str) -> str:
        self.counters.incr("calls")
        return f"{page.text.split('. ')[0]}. [q={question}]"


def png(w: int, h: int, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


class SizeImages:
    """Answers with two hits whose thumbnails are derived from the query image (so round trips are checkable)."""

    name = "sizeimg"

    def __init__(self) -> None:
        self.counters = Counters()
        self.fail: Exception | None = None

    def search(self, query: ImageQuery, k: int) -> list[ImageHit]:
        self.counters.incr("calls")
        if self.fail is not None:
            raise self.fail
        if query.image is None:
            return [ImageHit(title=f"by {query.url or query.key}", url="http://i/0")][:k]
        w, h = query.image.load().size
        return [
            ImageHit(
                title=f"{w}x{h} #{i}",
                url=f"http://i/{i}",
                thumbnail=ImageData(bytes=png(w + i, h)),
                score=1.0 - i / 10,
            )
            for i in range(k)
        ]


@pytest.fixture(scope="module")
def comps():
    return DictText(), DictReader(), FirstSentence(), SizeImages()


@pytest.fixture(scope="module")
def url(comps):
    text, reader, summ, image = comps
    app = create_app(
        (text, reader, summ), image, token=TOKEN, max_request_bytes=64 * 1024, top_k=2, workers=8
    )
    with serve(app) as u:
        yield u


@pytest.fixture
def token_env(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return TOKEN_ENV


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- auth, limits, validation -------------------------------------------------------------------------------


def test_health_needs_no_token_and_auth_guards_everything_else(url, comps):
    r = httpx.get(url + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "text": True, "image": True}
    calls = comps[0].counters.get("calls")
    for headers in ({}, auth("wrong"), {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
        r = httpx.post(url + "/v1/search/text", json={"query": "paris", "k": 2}, headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["type"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in r.text
        assert httpx.get(url + "/stats", headers=headers).status_code == 401
    assert comps[0].counters.get("calls") == calls  # never reached the backend
    r = httpx.post(url + "/v1/search/text", json={"query": "paris", "k": 2}, headers=auth())
    assert r.status_code == 200 and len(r.json()["hits"]) == 2


def test_body_over_limit_is_413_before_reading(url, comps):
    calls = comps[2].counters.get("calls")
    big = {"page": {"url": "u", "title": "t", "text": "x" * 70_000}, "question": "q", "query": "q"}
    r = httpx.post(url + "/v1/summarize", json=big, headers=auth())
    assert r.status_code == 413 and r.json()["error"]["type"] == "too_large"
    assert "65536" in r.json()["error"]["message"]

    # streamed (chunked, no Content-Length): refused once the limit is passed
    def chunks():
        yield b'{"page": {"url": "u", "title": "t", "text": "'
        for _ in range(20):
            yield b"y" * 8192
        yield b'"}}'

    r = httpx.post(
        url + "/v1/summarize", content=chunks(), headers={**auth(), "content-type": "application/json"}
    )
    assert r.status_code == 413
    # a declared size over the limit is refused without sending the body at all
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5) as s:
        s.sendall(
            b"POST /v1/summarize HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 99999999\r\n\r\n"
        )  # fmt: skip
        assert s.recv(4096).startswith(b"HTTP/1.1 413")
    assert comps[2].counters.get("calls") == calls
    # under the limit (and chunked) is fine
    ok = {"page": {"url": "u", "title": "t", "text": "Short page. Two."}, "question": "q", "query": "q"}
    r = httpx.post(url + "/v1/summarize", json=ok, headers=auth())
    assert r.status_code == 200 and r.json() == {"summary": "Short page. [q=q]"}


def test_bad_requests_name_the_field(url):
    r = httpx.post(url + "/v1/search/text", json={"query": "paris", "k": 0}, headers=auth())
    assert r.status_code == 422 and r.json()["error"]["type"] == "bad_request"
    assert "field 'k'" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/text_search", json={"k": 1}, headers=auth())
    assert r.status_code == 422 and "field 'query'" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/image_search", json={"k": 1}, headers=auth())
    assert r.status_code == 422 and "image_b64" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/image_search", json={"image_b64": "!!notb64", "k": 1}, headers=auth())
    assert r.status_code == 400 and "field 'image_b64'" in r.json()["error"]["message"]
    not_img = base64.b64encode(b"plain text, no image").decode()
    r = httpx.post(url + "/v1/image_search", json={"image_b64": not_img, "k": 1}, headers=auth())
    assert r.status_code == 400 and "not a decodable image" in r.json()["error"]["message"]
    r = httpx.post(
        url + "/v1/search/text", content=b"{not json", headers={**auth(), "content-type": "application/json"}
    )
    assert r.status_code == 422


# --- round trips through the client backends ----------------------------------------------------------------


def test_text_tool_over_service_matches_local_components(url, comps, token_env):
    text, reader, summ, _ = comps
    sample = Sample(id="s", question="Where is it?", images=[], answers=Answers("Paris"))
    remote = TextSearchTool(*service_text_pipeline(url, token_env, timeout_s=10), top_k=2, parallel=True)
    local = TextSearchTool(text, reader, summ, top_k=2, parallel=True)
    got, want = remote("paris sights", sample), local("paris sights", sample)
    assert got.ok and want.ok
    assert got.text == want.text  # same observation, the page that fails to read skipped in both
    assert "1. Eiffel Tower" in got.text and "2. Louvre" in got.text and "Broken" not in got.text
    assert got.stats["page_errors"] == 1 and got.stats["summaries"] == 2


def test_summarized_search_endpoint_falls_back_over_urls(url, token_env):
    client = ServiceClient(url, TOKEN, timeout_s=10)
    hits = client.text_search("paris", 3, question="What is there?")
    assert [h["url"] for h in hits] == ["http://p/1", "http://p/3", "http://p/4"]
    assert hits[2]["summary"] == "The Seine flows through Paris. [q=What is there?]"  # page text from the hit
    r = httpx.post(url + "/v1/text_search", json={"query": "paris"}, headers=auth())
    body = r.json()
    assert len(body["hits"]) == 2  # top_k default of the app
    assert body["candidates"] == 4 and body["page_errors"][0].startswith("http://p/2")
    assert hits == client.text_search("paris", 3, "What is there?")
    assert client.text_search("zebra", 3) == []  # no hits is not an error
    client.close()


def test_image_round_trip_with_thumbnails(url, token_env):
    backend = ServiceImageBackend(url, token_env, timeout_s=10)
    hits = backend.search(ImageQuery(image=ImageData(bytes=png(40, 30))), 3)
    assert [h.title for h in hits] == ["40x30 #0", "40x30 #1", "40x30 #2"]
    assert [h.thumbnail.load().size for h in hits] == [(40, 30), (41, 30), (42, 30)]
    assert hits[1].thumbnail.bytes == png(41, 30) and hits[1].score == pytest.approx(0.9)
    assert backend.search(ImageQuery(key="sample-7"), 1)[0].title == "by sample-7"
    assert backend.counters.get("calls") == 2


def test_stats_count_requests_and_backend_counters(url, comps):
    before = httpx.get(url + "/stats", headers=auth()).json()
    n0 = before["endpoints"].get("/v1/search/text", {}).get("requests", 0)
    c0 = comps[0].counters.get("calls")
    client = ServiceClient(url, TOKEN)
    for _ in range(3):
        client.search_text("louvre", 2)
    st = client.stats()
    ep = st["endpoints"]["/v1/search/text"]
    assert ep["requests"] == n0 + 3
    assert ep["latency_p99_s"] >= ep["latency_p50_s"] > 0
    assert st["backends"]["text"]["name"] == "dict"
    assert st["backends"]["text"]["calls"] == c0 + 3 == comps[0].counters.get("calls")
    assert st["backends"]["text"]["served_calls"] >= 3 and st["backends"]["text"]["served_latency_s"] > 0
    assert st["backends"]["reader"]["errors"] >= 1  # the broken page, from earlier tests
    assert st["guard"]["unauthorized"] >= 1 and st["guard"]["too_large"] >= 1
    client.close()


# --- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc, cls, retryable, status",
    [
        (BackendStopped("out of searches"), BackendStopped, False, 503),
        (SearchError("upstream 500", retryable=True, status=500), SearchError, True, 502),
        (SearchError("bad query", retryable=False), SearchError, False, 502),
        (RuntimeError("boom"), SearchError, True, 500),
    ],
)
def test_backend_errors_map_back_to_search_errors(url, comps, token_env, exc, cls, retryable, status):
    text, image = comps[0], comps[3]
    text.fail = image.fail = exc
    try:
        with pytest.raises(SearchError) as ei:
            ServiceTextBackend(url, token_env).search("paris", 2)
        assert type(ei.value) is cls and ei.value.retryable is retryable and ei.value.status == status
        if not isinstance(exc, RuntimeError):
            assert str(exc) in str(ei.value)
        else:
            assert "internal error (RuntimeError)" in str(ei.value)
        with pytest.raises(cls):
            ServiceImageBackend(url, token_env).search(ImageQuery(image=ImageData(bytes=png(8, 8))), 1)
        with pytest.raises(cls):
            ServiceClient(url, TOKEN).text_search("paris", 2)
    finally:
        text.fail = image.fail = None


def test_client_side_failures(url, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "not-the-token")
    with pytest.raises(BackendStopped, match="HTTP 401") as ei:
        ServiceReader(url, TOKEN_ENV).read("http://p/1")
    assert "not-the-token" not in str(ei.value)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert ServiceReader(url, TOKEN_ENV).read("http://p/1").title == "Eiffel Tower"
    with pytest.raises(SearchError, match="cannot read http://p/2") as ei:
        ServiceReader(url, TOKEN_ENV).read("http://p/2")
    assert ei.value.retryable is False and ei.value.status == 502
    # nothing listening on that port: a retryable error, quickly
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(SearchError, match="cannot reach") as ei:
        ServiceSummarizer(dead, None, connect_timeout_s=2).summarize(Page("u", "t", "x"), "q", "q")
    assert ei.value.retryable is True
    with pytest.raises(ValueError, match="http://"):
        ServiceClient("ftp://127.0.0.1:1")


def test_unconfigured_tool_is_backend_stopped_and_timeouts_are_retryable():
    class Slow:
        name = "slow"

        def search(self, query: str, k: int) -> list[WebHit]:
            time.sleep(1.5)
            return []

    app = create_app(
        (Slow(), DictReader(), FirstSentence()), None, token=None, max_request_bytes=1024, top_k=1
    )
    with serve(app) as u:
        assert httpx.get(u + "/health").json() == {"status": "ok", "text": True, "image": False}
        with pytest.raises(BackendStopped, match="no image search backend"):
            ServiceImageBackend(u, None).search(ImageQuery(key="x"), 1)
        with pytest.raises(SearchError, match="timed out") as ei:
            ServiceTextBackend(u, None, timeout_s=0.3).search("q", 1)
        assert ei.value.retryable is True
        assert ServiceTextBackend(u, None, timeout_s=10).search("q", 1) == []  # no token configured: open
