"""Text search tool: search -> read -> summarize, moving on past failing pages, page cap, stats, the query
argument, and `build_tools` over real local indexes."""

from __future__ import annotations

import json

import pytest

from mmsearch_r1.config import SearchConfig
from mmsearch_r1.search.base import BackendStopped, WebHit
from mmsearch_r1.search.local_text import ExtractiveSummarizer
from mmsearch_r1.tools import TextSearchTool, build_tools
from test_tools_contract import FakeReader, FakeTextBackend, make_sample


class RecordingSummarizer:
    name = "rec"

    def __init__(self, fail_urls=(), empty_urls=()):
        self.calls = []
        self.fail_urls, self.empty_urls = set(fail_urls), set(empty_urls)

    def summarize(self, page, question, query):
        self.calls.append((page.url, len(page.text), question, query))
        if page.url in self.fail_urls:
            raise BackendStopped("summarizer out of credit")
        return "" if page.url in self.empty_urls else f"summary of {page.url}"


@pytest.mark.parametrize("parallel", [True, False])
def test_failing_pages_move_on_to_next_urls(parallel):
    backend = FakeTextBackend([f"T{i}" for i in range(8)], with_text=False)
    reader = FakeReader(fail_urls={"http://w/0", "http://w/2"})
    summ = RecordingSummarizer(fail_urls={"http://w/3"}, empty_urls={"http://w/4"})
    tool = TextSearchTool(backend, reader, summ, top_k=3, max_candidates=8, parallel=parallel)
    res = tool("  eiffel   tower ", make_sample())
    assert res.ok
    assert backend.queries == [("eiffel tower", 8)]
    # 0 and 2 unreadable, 3 summarizer error, 4 empty summary: 1, 5, 6 are the three summaries, in list order
    assert [ln for ln in res.text.splitlines() if ln.startswith("URL:")] == [
        "URL: http://w/1", "URL: http://w/5", "URL: http://w/6",
    ]  # fmt: skip
    assert res.text.startswith("1. T1\nURL: http://w/1\nSummary: summary of http://w/1\n\n2. T5\n")
    assert "http://w/7" not in reader.reads  # stops once top_k summaries are in
    assert res.stats["summaries"] == 3 and res.stats["page_errors"] == 4 and res.stats["pages_read"] == 5
    assert all(q == "Which landmark is this?" and qq == "eiffel tower" for _, _, q, qq in summ.calls)


def test_hit_text_is_used_and_page_is_capped():
    backend = FakeTextBackend(["A", "B"], with_text=True)
    backend.search = lambda q, k: [WebHit(url="http://w/0", title="A", text="x" * 50_000)]
    reader, summ = FakeReader(), RecordingSummarizer()
    res = TextSearchTool(backend, reader, summ, top_k=5, max_page_chars=30_000)("q", make_sample())
    assert res.ok and reader.reads == []
    assert summ.calls == [("http://w/0", 30_000, "Which landmark is this?", "q")]


def test_every_page_failing_is_an_error():
    tool = TextSearchTool(FakeTextBackend(["A", "B"], with_text=False), FakeReader({"http://w/0", "http://w/1"}),
                          ExtractiveSummarizer(), top_k=5)  # fmt: skip
    res = tool("q", make_sample())
    assert not res.ok and "could not read any of the 2 pages" in res.error
    assert "failed" in res.text and res.stats["errors"] == 1 and res.stats["page_errors"] == 2


@pytest.mark.parametrize("arg", [None, "", "   "])
def test_missing_query(arg):
    backend = FakeTextBackend(["A"])
    res = TextSearchTool(backend, FakeReader(), ExtractiveSummarizer())(arg, make_sample())
    assert not res.ok and res.error == "empty query" and backend.queries == []


def test_build_tools_over_local_indexes(tmp_path):
    from PIL import Image

    from mmsearch_r1.search.local_image import build_image_index
    from mmsearch_r1.search.local_text import build_text_index

    pages = [
        {
            "url": "http://k/1",
            "title": "Blue Lake",
            "text": "Blue Lake lies in Norway. Its depth is 210 metres.",
        },
        {
            "url": "http://k/2",
            "title": "Red Hill",
            "text": "Red Hill is a hill in Wales. It is 300 metres high.",
        },
    ]
    (tmp_path / "pages.jsonl").write_text("\n".join(json.dumps(p) for p in pages))
    build_text_index(tmp_path / "pages.jsonl", tmp_path / "idx" / "text")
    Image.new("RGB", (50, 50), (0, 0, 255)).save(tmp_path / "lake.png")
    (tmp_path / "images.jsonl").write_text(
        json.dumps({"image": "lake.png", "title": "Blue Lake", "url": "http://k/1"})
    )
    build_image_index(tmp_path / "images.jsonl", tmp_path / "idx" / "image")

    idx = str(tmp_path / "idx")
    cfg = SearchConfig(top_k=2, text_backend={"type": "local", "index_dir": idx},
                       image_backend={"type": "local", "index_dir": idx})  # fmt: skip
    tools = build_tools(cfg)
    assert set(tools) == {"image_search", "text_search"}
    sample = make_sample()
    sample.question = "How deep is Blue Lake?"
    res = tools["text_search"]("Blue Lake depth", sample)
    assert res.ok and res.text.startswith("1. Blue Lake\nURL: http://k/1\nSummary: ")
    assert "210 metres" in res.text
    img = tools["image_search"](None, sample)
    assert img.ok and img.parts[1] == "1. Blue Lake\n"
    with pytest.raises(ValueError, match="index_dir"):
        build_tools(SearchConfig())
