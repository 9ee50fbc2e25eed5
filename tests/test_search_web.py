"""SerpApi Google/Lens against a real loopback server speaking SerpApi's documented shapes and errors."""

from __future__ import annotations

import io
import logging
import threading
import time
import traceback

import pytest
from PIL import Image

from _loopback import LoopbackServer, Reply, Request
from mmsearch_r1.search.base import BackendStopped, ImageQuery, SearchError
from mmsearch_r1.search.resilience import resilient
from mmsearch_r1.search.web.serpapi import SerpApiGoogle, SerpApiLens
from mmsearch_r1.types import ImageData

KEY = "sk-serp-TOPSECRET-0123456789"
FAST = {"max_attempts": 3, "backoff_s": 0.001, "max_backoff_s": 0.002}


def organic(n: int) -> dict:
    return {
        "search_metadata": {"id": "x", "status": "Success"},
        "organic_results": [
            {"position": i + 1, "title": f"T{i + 1}", "link": f"https://site{i + 1}.example/p", "snippet": f"s{i + 1}",
             "displayed_link": "site", "favicon": "f", "extra": {"ignored": True}}
            for i in range(n)
        ],
    }  # fmt: skip


def google(srv: LoopbackServer, **kw) -> SerpApiGoogle:
    return SerpApiGoogle(base_url=srv.url + "/search.json", api_key=KEY, **kw)


def scripted(*replies: Reply):
    """Handler answering with the given replies in order (the last one repeats)."""
    seq = list(replies)
    lock = threading.Lock()

    def handler(req: Request) -> Reply:
        with lock:
            return seq.pop(0) if len(seq) > 1 else seq[0]

    return handler


def test_google_search_parses_first_page_and_slices() -> None:
    with LoopbackServer(scripted(Reply(json=organic(8)))) as srv:
        b = google(srv, gl="us", hl="en")
        hits = b.search("eiffel tower height", 5)
        req = srv.requests[0]
    assert [h.title for h in hits] == ["T1", "T2", "T3", "T4", "T5"]
    assert hits[0].url == "https://site1.example/p" and hits[0].snippet == "s1" and hits[0].position == 1
    assert (
        req.path == "/search.json"
        and req.query["engine"] == "google"
        and req.query["q"] == "eiffel tower height"
    )
    assert req.query["api_key"] == KEY and req.query["gl"] == "us" and "num" not in req.query
    assert b.counters.snapshot() == {"calls": 1, "credits": 1}


def test_no_results_200_is_an_empty_answer() -> None:
    body = {
        "search_metadata": {"status": "Success"},
        "error": "Google hasn't returned any results for this query.",
    }
    with LoopbackServer(scripted(Reply(json=body))) as srv:
        b = google(srv)
        assert b.search("qwxzzy", 5) == []
    assert b.counters.get("errors") == 0 and b.counters.get("credits") == 0


@pytest.mark.parametrize(
    "status, message",
    [(401, "Invalid API key. Your API key should be here: https://serpapi.com/manage-api-key"),
     (403, "Forbidden"),
     (429, "Your account has run out of searches.")],
)  # fmt: skip
def test_fatal_errors_stop_the_backend_and_later_calls_send_nothing(status: int, message: str) -> None:
    with LoopbackServer(scripted(Reply(status=status, json={"error": message}))) as srv:
        b = resilient("text", google(srv), **FAST)
        with pytest.raises(BackendStopped) as e1:
            b.search("a", 5)
        assert srv.hits == 1  # not retried
        with pytest.raises(BackendStopped) as e2:
            b.search("another query", 5)
        assert srv.hits == 1  # failed fast, no request
    assert e1.value.status == status and str(e2.value) == str(e1.value)
    assert b.counters.snapshot() == {"calls": 1, "errors": 2}


def test_bad_request_400_is_not_retried() -> None:
    with LoopbackServer(scripted(Reply(status=400, json={"error": "Missing query `q` parameter."}))) as srv:
        b = resilient("text", google(srv), **FAST)
        with pytest.raises(SearchError) as e:
            b.search("x", 5)
        assert srv.hits == 1 and not e.value.retryable and not isinstance(e.value, BackendStopped)
        assert "Missing query" in str(e.value)
        # the backend is not stopped: the next call sends a request
        with pytest.raises(SearchError):
            b.search("y", 5)
        assert srv.hits == 2


@pytest.mark.parametrize(
    "first",
    [Reply(status=500, json={"error": "Internal error"}), Reply(status=503, body="unavailable"),
     Reply(status=429, json={"error": "Your searches for the past hour have exceeded the hourly limit."})],
)  # fmt: skip
def test_transient_errors_are_retried_then_succeed(first: Reply) -> None:
    with LoopbackServer(scripted(first, Reply(json=organic(3)))) as srv:
        b = resilient("text", google(srv), **FAST)
        hits = b.search("q", 5)
        assert srv.hits == 2 and len(hits) == 3
    assert b.counters.snapshot() == {"calls": 2, "errors": 1, "retries": 1, "credits": 1}


def test_retries_give_up_after_max_attempts() -> None:
    with LoopbackServer(scripted(Reply(status=500, json={"error": "boom"}))) as srv:
        b = resilient("text", google(srv), **FAST)
        with pytest.raises(SearchError) as e:
            b.search("q", 5)
        assert srv.hits == 3 and e.value.retryable and e.value.status == 500
    assert b.counters.snapshot() == {"calls": 3, "errors": 3, "retries": 2}


def test_slow_response_times_out_and_is_retried() -> None:
    with LoopbackServer(scripted(Reply(json=organic(2), delay_s=1.5), Reply(json=organic(2)))) as srv:
        b = resilient("text", google(srv, timeout_s=0.3), **FAST)
        t0 = time.monotonic()
        hits = b.search("q", 5)
        elapsed = time.monotonic() - t0
    assert len(hits) == 2 and elapsed < 1.4
    assert b.counters.snapshot() == {"calls": 2, "errors": 1, "retries": 1, "credits": 1}


def test_malformed_json_is_a_clear_non_retryable_error() -> None:
    with LoopbackServer(
        scripted(Reply(body='{"organic_results": [', headers={"Content-Type": "application/json"}))
    ) as srv:
        b = resilient("text", google(srv), **FAST)
        with pytest.raises(SearchError, match="malformed JSON") as e:
            b.search("q", 5)
        assert srv.hits == 1 and not e.value.retryable


def _png(color: tuple[int, int, int], size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def _lens_server() -> tuple[LoopbackServer, dict]:
    state: dict = {}

    def handler(req: Request) -> Reply:
        base = f"http://127.0.0.1:{state['port']}"
        if req.path == "/search.json":
            return Reply(json={
                "search_metadata": {"id": "1", "status": "Success", "total_time_taken": 6.9},
                "visual_matches": [
                    {"position": 7, "title": "Seventh", "link": "https://g.example/7", "source": "G",
                     "thumbnail": base + "/t/ok2.png", "rating": "4.5", "price": {"value": "$3"}},
                    {"position": 1, "title": "First", "link": "https://a.example/1", "source": "A",
                     "thumbnail": base + "/t/ok1.png", "rating": 4, "thumbnail_width": 16},
                    {"position": 3, "title": "Gone thumb", "link": "https://c.example/3", "thumbnail": base + "/t/404"},
                    {"position": 4, "title": "Not an image", "link": "https://d.example/4", "thumbnail": base + "/t/html"},
                    {"position": 5, "title": "Corrupt", "link": "https://e.example/5", "thumbnail": base + "/t/bad.png"},
                    {"position": 9, "title": "Beyond k", "link": "https://z.example/9", "thumbnail": base + "/t/ok1.png"},
                ],
                "related_content": [{"query": "ignored"}],
            })  # fmt: skip
        if req.path == "/upload":
            state["upload"] = req
            return Reply(json={"image_id": "img-42"})
        return {
            "/t/ok1.png": Reply(body=_png((255, 0, 0)), headers={"Content-Type": "image/png"}),
            "/t/ok2.png": Reply(body=_png((0, 255, 0)), headers={"Content-Type": "image/png"}),
            "/t/404": Reply(status=404, body="not found"),
            "/t/html": Reply(body="<html></html>", headers={"Content-Type": "text/html"}),
            "/t/bad.png": Reply(body=b"\x89PNG garbage", headers={"Content-Type": "image/png"}),
        }[req.path]

    srv = LoopbackServer(handler)
    state["port"] = srv.port
    return srv, state


def test_lens_by_url_orders_by_position_and_drops_bad_thumbnails_keeping_titles() -> None:
    srv, _ = _lens_server()
    with srv:
        b = SerpApiLens(base_url=srv.url + "/search.json", api_key=KEY, fetch={"allow_hosts": ["127.0.0.1"]})
        hits = b.search(ImageQuery(url="https://img.example/q.jpg"), 5)
        search_req = srv.requests[0]
        thumb_paths = sorted(r.path for r in srv.requests[1:])
    assert (
        search_req.query["engine"] == "google_lens" and search_req.query["url"] == "https://img.example/q.jpg"
    )
    assert [h.title for h in hits] == ["First", "Gone thumb", "Not an image", "Corrupt", "Seventh"]
    assert [h.thumbnail is not None for h in hits] == [True, False, False, False, True]
    assert hits[0].thumbnail.load().getpixel((0, 0)) == (255, 0, 0)
    assert hits[4].thumbnail.load().getpixel((0, 0)) == (0, 255, 0)
    assert hits[0].score == 4.0 and hits[4].score == 4.5 and hits[0].url == "https://a.example/1"
    assert thumb_paths == [
        "/t/404",
        "/t/bad.png",
        "/t/html",
        "/t/ok1.png",
        "/t/ok2.png",
    ]  # "Beyond k" not fetched
    assert b.counters.get("thumbnail_errors") == 3 and b.counters.get("calls") == 1


def test_lens_thumbnails_from_internal_addresses_are_refused_by_default() -> None:
    srv, _ = _lens_server()
    with srv:
        b = SerpApiLens(base_url=srv.url + "/search.json", api_key=KEY)  # no allow-list: loopback is internal
        hits = b.search(ImageQuery(url="https://img.example/q.jpg"), 2)
        assert srv.hits == 1  # only the API call; no thumbnail request reached the server
    assert [h.title for h in hits] == ["First", "Gone thumb"] and all(h.thumbnail is None for h in hits)


def test_lens_uploads_bytes_fitted_under_the_cap_and_searches_by_reference() -> None:
    import numpy as np

    noise = np.random.default_rng(0).integers(0, 255, (500, 500, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    big = buf.getvalue()
    assert len(big) > 500_000
    srv, state = _lens_server()
    with srv:
        b = SerpApiLens(
            base_url=srv.url + "/search.json",
            api_key=KEY,
            upload_url=srv.url + "/upload",
            fetch={"allow_hosts": ["127.0.0.1"]},
        )
        hits = b.search(ImageQuery(image=ImageData(bytes=big)), 1)
        search_req = next(r for r in srv.requests if r.path == "/search.json")
    up = state["upload"]
    assert up.method == "POST" and b"image/jpeg" in up.body and len(up.body) <= 500_000 + 1000
    assert search_req.query["image_id"] == "img-42" and "url" not in search_req.query
    assert [h.title for h in hits] == ["First"]


def test_keys_never_reach_logs_exceptions_or_reprs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    replies = [
        Reply(json=organic(1)),
        Reply(status=500, json={"error": f"echo {KEY}"}),
        Reply(body="not json", headers={"Content-Type": "application/json"}),
        Reply(json=organic(1), delay_s=1.0),
        Reply(status=401, json={"error": "Invalid API key"}),
    ]
    with LoopbackServer(scripted(*replies)) as srv:
        b = resilient("text", google(srv, timeout_s=0.3), max_attempts=1)
        for q in ("a", "b", "c", "d", "e", "f"):
            try:
                b.search(q, 3)
            except SearchError as e:
                errors.append(e)
    assert len(errors) == 5
    assert srv.requests[0].query["api_key"] == KEY  # the key did go where it belongs
    texts = [caplog.text, repr(b), repr(b.inner)]
    for e in errors:
        texts += [str(e), repr(e), "".join(traceback.format_exception(e))]
        chained: BaseException | None = e
        while chained is not None:  # nothing reachable from the error holds the request URL
            texts += [repr(chained), repr(vars(chained)), repr(getattr(chained, "request", None))]
            chained = chained.__cause__ or chained.__context__
    for t in texts:
        assert KEY not in t
    assert "HTTP Request" in caplog.text and "api_key=***" in caplog.text  # httpx's own log line, scrubbed
