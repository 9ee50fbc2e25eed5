"""Search results cannot steer any page reader at internal addresses: the factory guards every web reader.

Real loopback servers: a SerpApi-shaped search API whose results link to internal and public addresses, and a
JINA-shaped reader that records every target it is asked to read. Only the public target may reach it."""

from __future__ import annotations

import httpx
import pytest

from _loopback import LoopbackServer, Reply, Request
from mmsearch_r1.config import SearchConfig
from mmsearch_r1.search.factory import build_text_pipeline
from mmsearch_r1.search.ssrf import UnsafeURLError
from mmsearch_r1.tools import TextSearchTool
from mmsearch_r1.types import Answers, Sample

PUBLIC = "http://93.184.216.34/ok"  # a global address written as a literal: checked without DNS
INTERNAL = [
    "http://169.254.169.254/latest/meta-data/iam",
    "http://127.0.0.1:9/admin",
    "http://10.0.0.5/",
    "http://[::1]/x",
    "http://0x7f000001/",
]


def _serp(req: Request) -> Reply:
    links = [*INTERNAL, PUBLIC]
    organic = [{"position": i + 1, "title": f"T{i}", "link": u, "snippet": "s"} for i, u in enumerate(links)]
    return Reply(json={"search_metadata": {"status": "Success"}, "organic_results": organic})


def _jina(req: Request) -> Reply:
    data = {
        "title": "Page",
        "url": req.raw_path[1:],
        "content": "Secret metadata token AKIA. The tower is iron.",
    }
    return Reply(json={"code": 200, "data": data})


def _cfg(serp: LoopbackServer, jina: LoopbackServer, reader: dict | None = None) -> SearchConfig:
    return SearchConfig(
        top_k=5,
        text_backend={
            "type": "serpapi_google",
            "base_url": serp.url + "/search.json",
            "api_key": "sk-serp-ssrf-test-123456",
            "reader": reader or {"type": "jina", "base_url": jina.url, "api_key_env": None},
            "summarizer": {"type": "extractive"},
        },
        image_backend={"type": "local"},
    )


def test_jina_reader_from_the_factory_never_sends_internal_targets() -> None:
    with LoopbackServer(_serp) as serp, LoopbackServer(_jina) as jina:
        _, reader, _ = build_text_pipeline(_cfg(serp, jina))
        for url in INTERNAL:
            with pytest.raises(UnsafeURLError):
                reader.read(url)
        assert jina.hits == 0
        assert reader.read(PUBLIC).text.startswith("Secret metadata")
        assert [r.raw_path for r in jina.requests] == ["/" + PUBLIC]


def test_text_search_tool_reads_only_the_public_result() -> None:
    with LoopbackServer(_serp) as serp, LoopbackServer(_jina) as jina:
        tool = TextSearchTool(*build_text_pipeline(_cfg(serp, jina)), top_k=5)
        res = tool(
            "eiffel tower",
            Sample(id="s", question="What is it made of?", images=[], answers=Answers("iron", [])),
        )
        targets = [r.raw_path[1:] for r in jina.requests]
    assert targets == [PUBLIC]
    assert res.ok and "93.184.216.34" in res.parts[0] and "169.254" not in res.parts[0]
    assert res.stats["page_errors"] == len(INTERNAL)


def test_fetch_reader_allow_list_still_works_and_is_the_only_way_in() -> None:
    def page(req: Request) -> Reply:
        return Reply(body="<html><title>Local</title><body><p>Local page text about iron.</p></body></html>",
                     headers={"Content-Type": "text/html"})  # fmt: skip

    with LoopbackServer(_serp) as serp, LoopbackServer(_jina) as jina, LoopbackServer(page) as site:
        _, guarded, _ = build_text_pipeline(_cfg(serp, jina, {"type": "fetch"}))
        with pytest.raises(UnsafeURLError):
            guarded.read(site.url + "/p")
        _, allowed, _ = build_text_pipeline(_cfg(serp, jina, {"type": "fetch", "allow_hosts": ["127.0.0.1"]}))
        assert "iron" in allowed.read(site.url + "/p").text
        assert site.hits == 1


def test_service_read_and_text_search_refuse_internal_targets() -> None:
    from mmsearch_r1.search.service import create_app_from_config
    from test_search_service import serve

    with LoopbackServer(_serp) as serp, LoopbackServer(_jina) as jina:
        app = create_app_from_config(_cfg(serp, jina), token=None, image=False)
        with serve(app) as url:
            r = httpx.post(url + "/v1/read", json={"url": INTERNAL[0]}, timeout=10)
            assert r.status_code == 502 and "non-global" in r.json()["error"]["message"]
            r = httpx.post(url + "/v1/text_search", json={"query": "eiffel", "k": 3}, timeout=10)
            assert r.status_code == 200
            assert [h["url"] for h in r.json()["hits"]] == [PUBLIC]
        assert [q.raw_path[1:] for q in jina.requests] == [PUBLIC]
