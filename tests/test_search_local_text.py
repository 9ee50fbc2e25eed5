"""Local text search: BM25 ranking on tiny corpora (exact orders + parity with the Lucene formula by hand),
index persistence, the local reader, the extractive summarizer and the factory wiring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mmsearch_r1.config import SearchConfig
from mmsearch_r1.search.base import Page, SearchError
from mmsearch_r1.search.local_text import (
    ExtractiveSummarizer,
    LocalReader,
    LocalTextBackend,
    build_text_index,
    read_pages,
    split_sentences,
    tokenize,
)

DOCS = [
    ("http://t/0", "Cats", "The cat sat on the mat."),
    ("http://t/1", "Dogs", "Dogs chase cats in the park."),
    ("http://t/2", "Friends", "A cat and a dog became friends; the cat purred."),
    ("http://t/3", "Markets", "Stock markets fell sharply today."),
]


def write_pages(path: Path, docs=DOCS) -> Path:
    path.write_text("\n".join(json.dumps({"url": u, "title": t, "text": x}) for u, t, x in docs) + "\n")
    return path


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("textidx")
    build_text_index(write_pages(root / "pages.jsonl"), root / "idx" / "text")
    return root / "idx"


@pytest.mark.parametrize(
    "query, expected",
    [
        ("cat", [2, 0]),  # tf 2 in a 7-word doc beats tf 1 in a 4-word doc
        ("markets", [3]),
        ("dog", [2]),  # no stemming: "dogs" (doc 1) is another word
        ("dog cats", [2, 0, 1]),  # rare "dog" (df 1) outweighs "cats" (df 2: title of 0, text of 1)
        ("cat purred", [2, 0]),
        ("the on a", []),  # stopwords only
        ("zebra", []),
    ],
)
def test_bm25_exact_ranking(index_dir, query, expected):
    hits = LocalTextBackend(str(index_dir)).search(query, 10)
    assert [h.url for h in hits] == [DOCS[i][0] for i in expected]
    assert [h.position for h in hits] == list(range(1, len(expected) + 1))
    for h in hits:
        assert h.text == dict((u, x) for u, _, x in DOCS)[h.url]
        assert h.title and h.snippet


def lucene_bm25(query: str, docs: list[list[str]], k1=1.5, b=0.75) -> list[float]:
    n = len(docs)
    avgdl = sum(map(len, docs)) / n
    out = []
    for d in docs:
        s = 0.0
        for term in set(tokenize(query)):
            df = sum(term in x for x in docs)
            if df == 0:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            tf = d.count(term)
            s += idf * tf / (tf + k1 * (1 - b + b * len(d) / avgdl))
        out.append(s)
    return out


@pytest.mark.parametrize("query", ["cat", "dog cats park", "stock cat friends", "sharply purred mat"])
def test_bm25_scores_match_lucene_formula(index_dir, query):
    docs = [tokenize(t + "\n" + x) for _, t, x in DOCS]
    got = LocalTextBackend(str(index_dir)).scores(query)
    assert got.tolist() == pytest.approx(lucene_bm25(query, docs), rel=1e-5, abs=1e-6)


def test_k_limits_and_ties_keep_corpus_order(tmp_path):
    docs = [(f"http://d/{i}", f"doc {i}", "same words here") for i in range(5)]
    build_text_index(write_pages(tmp_path / "p.jsonl", docs), tmp_path / "i")
    b = LocalTextBackend(str(tmp_path / "i"))
    assert [h.url for h in b.search("words", 3)] == ["http://d/0", "http://d/1", "http://d/2"]
    assert b.search("words", 0) == []
    assert len(b.search("words", 50)) == 5


def test_persisted_index_round_trip(index_dir, tmp_path):
    text_dir = index_dir / "text"
    assert (text_dir / "text_index.json").is_file() and (text_dir / "bm25").is_dir()
    a = LocalTextBackend(str(index_dir))
    b = LocalTextBackend(str(text_dir))  # the text dir itself works too
    for q in ("cat", "dog cats", "stock markets"):
        assert [(h.url, h.title) for h in a.search(q, 4)] == [(h.url, h.title) for h in b.search(q, 4)]
    # loading reads the saved arrays; removing the pages copy must break loading (no silent rebuild)
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in text_dir.iterdir():
        if f.is_file() and f.name != "pages.jsonl":
            (copy / f.name).write_bytes(f.read_bytes())
    with pytest.raises(FileNotFoundError):
        LocalTextBackend(str(copy))
    with pytest.raises(FileNotFoundError, match="search index"):
        LocalTextBackend(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="index_dir"):
        LocalTextBackend()


def test_bad_pages_rows_name_line_and_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"url": "u1", "title": "t", "text": "x"}\n{"url": "u2", "title": "t"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'text'"):
        read_pages(p)
    p.write_text('{"url": "u1", "text": "x"}\nnot json\n')
    with pytest.raises(ValueError, match=r":2: not valid JSON"):
        read_pages(p)
    p.write_text('{"url": "u1", "text": "x"}\n{"url": "u1", "text": "y"}\n')
    with pytest.raises(ValueError, match=r":2: duplicate url"):
        read_pages(p)


def test_reader_by_url(index_dir):
    r = LocalReader(str(index_dir))
    assert r.read("http://t/3") == Page("http://t/3", "Markets", DOCS[3][2])
    with pytest.raises(SearchError) as ei:
        r.read("http://t/404")
    assert not ei.value.retryable and "http://t/404" in str(ei.value)
    LocalTextBackend(str(index_dir))  # registers its corpus for option-less readers
    assert LocalReader().read("http://t/1").title == "Dogs"


PAGE = Page(
    "http://p",
    "Eiffel Tower",
    "The Eiffel Tower is a landmark in Paris. It attracts many visitors every year. "
    "Gustave Eiffel's company designed and built the tower. Construction finished in 1889 for the World's Fair. "
    "The tower is 330 metres tall.\n\nIt was the tallest structure in the world until 1930. Tickets can be "
    "bought online. The view from the top is famous. Many souvenirs are sold nearby. Paris has many museums.",
)


def test_extractive_summary_picks_the_answering_sentence():
    s = ExtractiveSummarizer().summarize(
        PAGE, "In which year was the Eiffel Tower completed?", "Eiffel Tower finished"
    )
    assert "Construction finished in 1889" in s
    sents = split_sentences(s)
    assert 1 <= len(sents) <= 5
    # in page order
    positions = [PAGE.text.index(x) for x in sents]
    assert positions == sorted(positions)
    # the off-topic sentences are not picked
    assert "souvenirs" not in s and "Tickets" not in s


def test_extractive_summary_limits():
    one = ExtractiveSummarizer(max_sentences=1).summarize(
        PAGE, "How tall is it in metres?", "tower height metres"
    )
    assert one == "The tower is 330 metres tall."
    capped = ExtractiveSummarizer(max_chars=60).summarize(PAGE, "Eiffel tower Paris 1889", "tower")
    assert 0 < len(capped) <= 60
    lead = ExtractiveSummarizer().summarize(PAGE, "zzz", "qqq")  # nothing matches: the lead
    assert lead.startswith("The Eiffel Tower is a landmark in Paris.")
    # the page is cut at max_page_chars before summarizing
    cut = ExtractiveSummarizer(max_page_chars=40).summarize(PAGE, "1889", "construction finished")
    assert "1889" not in cut
    with pytest.raises(ValueError):
        ExtractiveSummarizer(max_sentences=0)


def test_factory_builds_local_pipeline(index_dir):
    from mmsearch_r1.search.factory import build_text_pipeline

    cfg = SearchConfig(text_backend={"type": "local", "index_dir": str(index_dir)})
    backend, reader, summarizer = build_text_pipeline(cfg)
    hits = backend.search("cat", 5)
    assert [h.url for h in hits] == ["http://t/2", "http://t/0"]
    assert reader.read("http://t/0").title == "Cats"
    assert "cat" in summarizer.summarize(reader.read("http://t/0"), "where did the cat sit?", "cat")
    with pytest.raises(ValueError, match="index_dir"):
        build_text_pipeline(SearchConfig(text_backend={"type": "local"}))
