"""SQLite cache, cached wrappers, in-flight collapse, concurrency limits and the backend factory (loopback only)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from _loopback import LoopbackServer, Reply, Request
from mmsearch_r1.config import SearchConfig
from mmsearch_r1.search.base import ImageQuery, Page, SearchError
from mmsearch_r1.search.cache import CachedImageBackend, CachedSummarizer, CachedTextBackend, SQLiteCache
from mmsearch_r1.search.factory import build_image_backend, build_text_pipeline
from mmsearch_r1.search.resilience import Guard, resilient
from mmsearch_r1.search.web.serpapi import SerpApiGoogle, SerpApiLens
from mmsearch_r1.search.web.summarize import OpenAISummarizer
from test_search_web import FAST, KEY, _lens_server, organic, scripted
from test_search_web_readers import chat_reply, jina_json


def test_sqlite_cache_namespaces_and_threads(tmp_path: Path) -> None:
    c = SQLiteCache(str(tmp_path / "c.db"))
    c.put("search", {"q": "a"}, [1, 2])
    c.put("page", {"q": "a"}, {"text": "p"})
    assert c.get("search", {"q": "a"}) == [1, 2] and c.get("page", {"q": "a"}) == {"text": "p"}
    assert c.get("summary", {"q": "a"}) is None
    with pytest.raises(ValueError, match="namespace 'pages'"):
        c.get("pages", {"q": "a"})

    def work(i: int) -> None:
        for j in range(20):
            c.put("summary", {"i": i, "j": j}, f"{i}-{j}")
            assert c.get("summary", {"i": i, "j": j}) == f"{i}-{j}"

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.count("summary") == 120
    mode = c._conn().execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_text_cache_hit_without_network_errors_not_cached_empty_cached(tmp_path: Path) -> None:
    no_results = Reply(json={"error": "Google hasn't returned any results for this query."})
    routes = {"good": [Reply(json=organic(4))], "flaky": [Reply(status=400, json={"error": "bad"}), Reply(json=organic(2))],
              "nothing": [no_results]}  # fmt: skip

    def handler(req: Request) -> Reply:
        seq = routes[req.query["q"].strip().lower()]
        return seq.pop(0) if len(seq) > 1 else seq[0]

    with LoopbackServer(handler) as srv:
        b = CachedTextBackend(
            SerpApiGoogle(base_url=srv.url, api_key=KEY), SQLiteCache(str(tmp_path / "c.db"))
        )
        first = b.search("good", 3)
        again = b.search("  GOOD ", 3)  # normalized query: same key
        assert srv.hits == 1 and again == first and len(first) == 3
        b.search("good", 2)  # k is part of the key
        assert srv.hits == 2
        with pytest.raises(SearchError):
            b.search("flaky", 3)
        assert len(b.search("flaky", 3)) == 2 and srv.hits == 4  # the error was not cached
        assert b.search("nothing", 3) == [] and b.search("nothing", 3) == [] and srv.hits == 5  # [] is cached
    assert b.counters.get("cache_hits") == 2


def test_collapse_then_cache_hit_then_survives_restart(tmp_path: Path) -> None:
    db = tmp_path / "cache.db"
    with LoopbackServer(scripted(Reply(json=organic(5), delay_s=0.4))) as srv:
        cfg = SearchConfig(
            text_backend={"type": "serpapi_google", "base_url": srv.url, "api_key": KEY, "retry": FAST,
                          "reader": {"type": "jina", "base_url": srv.url}, "summarizer": {"type": "openai", "model": "m"}},
            cache_path=str(db),
        )  # fmt: skip
        backend, reader, _ = build_text_pipeline(cfg)
        n = 16
        barrier = threading.Barrier(n)
        results: list = [None] * n

        def one(i: int) -> None:
            barrier.wait()
            results[i] = backend.search("Who designed the Eiffel Tower?", 5)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert srv.hits == 1  # N concurrent identical requests -> one upstream call
        assert all(r == results[0] for r in results) and len(results[0]) == 5
        assert backend.counters.get("collapsed") == n - 1
        assert backend.search("who designed the eiffel tower?", 5) == results[0]
        assert srv.hits == 1 and backend.counters.get("cache_hits") == 1

        # a fresh process reads the same file: no request
        code = textwrap.dedent(f"""
            import json
            from mmsearch_r1.config import SearchConfig
            from mmsearch_r1.search.factory import build_text_pipeline
            cfg = SearchConfig(text_backend={{"type": "serpapi_google", "base_url": {srv.url!r}, "api_key": "other",
                                             "summarizer": {{"type": "openai", "model": "m"}}}},
                               cache_path={str(db)!r})
            b, _, _ = build_text_pipeline(cfg)
            print(json.dumps([h.url for h in b.search("Who designed the Eiffel Tower?", 5)]))
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == [h.url for h in results[0]]
        assert srv.hits == 1  # served from the file written by the other process
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("cache.db"))
    assert len(blob) > 0 and KEY.encode() not in blob


def test_cache_written_by_a_subprocess_is_read_here(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    with LoopbackServer(scripted(jina_json("Page body from the server."))) as srv:
        code = textwrap.dedent(f"""
            from mmsearch_r1.config import SearchConfig
            from mmsearch_r1.search.factory import build_text_pipeline
            cfg = SearchConfig(text_backend={{"type": "serpapi_google", "api_key": "k",
                               "reader": {{"type": "jina", "base_url": {srv.url!r}}},
                               "summarizer": {{"type": "openai", "model": "m"}}}}, cache_path={str(db)!r})
            _, r, _ = build_text_pipeline(cfg)
            print(r.read("https://93.184.216.34/a").text)
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "Page body from the server." and srv.hits == 1
        cfg = SearchConfig(
            text_backend={
                "type": "serpapi_google",
                "api_key": "k",
                "reader": {"type": "jina", "base_url": srv.url},
                "summarizer": {"type": "openai", "model": "m"},
            },
            cache_path=str(db),
        )
        _, reader, _ = build_text_pipeline(cfg)
        assert reader.read("https://93.184.216.34/a").text == "Page body from the server."
        assert srv.hits == 1 and reader.counters.get("cache_hits") == 1


def test_collapsed_error_reaches_every_waiter_and_is_not_cached() -> None:
    with LoopbackServer(
        scripted(Reply(status=400, json={"error": "bad"}, delay_s=0.3), Reply(json=organic(1)))
    ) as srv:
        b = resilient("text", SerpApiGoogle(base_url=srv.url, api_key=KEY), **FAST)
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def one() -> None:
            barrier.wait()
            try:
                b.search("same", 3)
            except SearchError as e:
                errors.append(e)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert srv.hits == 1 and len(errors) == 8
        assert len(b.search("same", 3)) == 1 and srv.hits == 2


def test_one_concurrency_limit_per_upstream() -> None:
    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    def handler(req: Request) -> Reply:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.15)
        with lock:
            state["now"] -= 1
        return Reply(json=organic(1))

    with LoopbackServer(handler) as srv:
        upstream = f"test-limit-{srv.port}"
        a = SerpApiGoogle(base_url=srv.url, api_key=KEY)
        b = SerpApiGoogle(base_url=srv.url, api_key=KEY)
        wa = type(resilient("text", a))(a, Guard(upstream, max_concurrency=2))
        wb = type(resilient("text", b))(b, Guard(upstream, max_concurrency=2))  # shares the semaphore
        threads = [threading.Thread(target=(wa if i % 2 else wb).search, args=(f"q{i}", 1)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert srv.hits == 6 and state["max"] == 2


def test_image_and_summary_caches(tmp_path: Path) -> None:
    cache = SQLiteCache(str(tmp_path / "img.db"))
    srv, _ = _lens_server()
    with srv:
        lens = SerpApiLens(
            base_url=srv.url + "/search.json", api_key=KEY, fetch={"allow_hosts": ["127.0.0.1"]}
        )
        b = CachedImageBackend(lens, cache)
        first = b.search(ImageQuery(url="https://img.example/q.jpg", key="sample-1"), 2)
        hits = srv.hits
        again = b.search(ImageQuery(url="https://img.example/q.jpg"), 2)
        assert srv.hits == hits
    assert [h.title for h in again] == [h.title for h in first] == ["First", "Gone thumb"]
    assert again[0].thumbnail.bytes == first[0].thumbnail.bytes and again[0].thumbnail.load().size == (16, 16)
    assert again[1].thumbnail is None and again[0].score == 4.0

    with LoopbackServer(scripted(chat_reply("Summary A."), chat_reply("Summary B."))) as srv:
        s = CachedSummarizer(OpenAISummarizer(model="m", base_url=srv.url, api_key="k"), cache)
        page = Page(url="https://e.org", title="t", text="body")
        assert s.summarize(page, "Who?", "q") == "Summary A."
        assert s.summarize(page, "  who? ", "q") == "Summary A." and srv.hits == 1
        assert s.summarize(page, "When?", "q") == "Summary B." and srv.hits == 2  # the question is in the key
        changed = Page(url="https://e.org", title="t", text="new body")
        s.summarize(changed, "Who?", "q")
        assert srv.hits == 3  # so is the page text


def test_factory_builds_wraps_and_reports_unknown_types(tmp_path: Path) -> None:
    with LoopbackServer(
        lambda r: chat_reply("S.") if r.path.endswith("/chat/completions") else Reply(json=organic(2))
    ) as srv:
        cfg = SearchConfig(
            text_backend={"type": "serpapi_google", "base_url": srv.url, "api_key": KEY, "hl": "en",
                          "reader": {"type": "fetch", "allow_hosts": ["127.0.0.1"], "cache": False},
                          "summarizer": {"type": "openai", "model": "m", "base_url": srv.url + "/v1"}},
            image_backend={"type": "serpapi_lens", "base_url": srv.url, "api_key": KEY, "max_concurrency": 2},
            cache_path=str(tmp_path / "f.db"), timeout_s=7.0,
        )  # fmt: skip
        backend, reader, summ = build_text_pipeline(cfg)
        image = build_image_backend(cfg)
        assert isinstance(backend, CachedTextBackend) and isinstance(image, CachedImageBackend)
        assert type(reader).__name__ == "GuardedReader"  # the SSRF guard, outermost
        assert type(reader.inner).__name__ == "ResilientReader"  # cache: False
        assert backend.inner.inner.http.client.timeout.read == 7.0  # cfg.timeout_s reached the backend
        assert len(backend.search("q", 5)) == 2 and summ.summarize(Page("u", "t", "x"), "q", "q") == "S."
        assert KEY not in repr(backend) and KEY not in repr(image)
    with pytest.raises(
        ValueError, match=r"text_backend.type: unknown text search backend 'bing'; known: .*serpapi_google"
    ):
        build_text_pipeline(SearchConfig(text_backend={"type": "bing"}))
    with pytest.raises(ValueError, match="image_backend: bad options for 'serpapi_lens'"):
        build_image_backend(SearchConfig(image_backend={"type": "serpapi_lens", "api_key": "k", "colour": 1}))
    with pytest.raises(ValueError, match="SERPAPI_API_KEY"):
        build_text_pipeline(
            SearchConfig(text_backend={"type": "serpapi_google", "api_key_env": "SERPAPI_API_KEY_UNSET_X"})
        )
    with pytest.raises(ValueError, match="retry: unknown keys"):
        build_image_backend(
            SearchConfig(image_backend={"type": "serpapi_lens", "api_key": "k", "retry": {"tries": 2}})
        )
