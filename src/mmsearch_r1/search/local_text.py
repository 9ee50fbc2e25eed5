"""Local, offline text search: BM25 over a JSONL corpus, a reader over the same corpus, an extractive summarizer.

- `build_text_index(pages_jsonl, out_dir)` reads pages `{"url", "title", "text"}` (one JSON object a line), indexes
  `title + text` with `bm25s` (Lucene BM25, k1=1.5, b=0.75) and writes to `out_dir`: the bm25s arrays under
  `bm25/`, the pages as `pages.jsonl` and `text_index.json` (format version, page count, tokenizer settings).
- `LocalTextBackend(index_dir)` (registered as text backend `"local"`) loads that directory (no rebuild) and
  answers `search(query, k)` with `WebHit`s whose `text` is the whole page (so the tool need not read it).
  `index_dir` may be the text index itself or a directory holding it as `text/` (the layout of
  `mmsearch-r1 search index --out DIR`). Ties in score keep corpus order; pages scoring 0 are not returned.
- `LocalReader(index_dir=None)` (reader `"local"`) returns a page by url from that corpus, or, without
  `index_dir`, from any local text index loaded in this process. An unknown url is a non-retryable SearchError.
- `ExtractiveSummarizer` (summarizer `"extractive"`): stands in for the paper's LLM summarizer. It splits the
  page (first `max_page_chars`) into sentences, scores each by the idf-weighted overlap of its words with the
  question and query words (query words count double), keeps at most `max_sentences` (default 5, as in the
  paper) best ones, in page order, and caps the result at `max_chars` characters. If no sentence shares a word
  with the question or query, it returns the page's first sentences (the lead).

Tokenization (index, queries and summaries): NFKC, casefold, runs of letters/digits, English stopwords removed.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

from mmsearch_r1.search.base import READERS, SUMMARIZERS, TEXT_BACKENDS, Page, SearchError, WebHit

log = logging.getLogger(__name__)

INDEX_META = "text_index.json"
FORMAT_VERSION = 1
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just me more most my myself no nor not of off
    on once only or other our ours ourselves out over own same she should so some such than that the their theirs
    them themselves then there these they this those through to too under until up very was we were what when
    where which while who whom why will with would you your yours yourself yourselves""".split()
)


def _bm25s() -> Any:
    """Import bm25s; it sets its own logger to DEBUG on import, so hand the level back to the application."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.NOTSET)
    return bm25s


def tokenize(text: str) -> list[str]:
    """Words of `text` for BM25 and summaries: NFKC, casefolded, letters/digits only, stopwords dropped."""
    words = _WORD.findall(unicodedata.normalize("NFKC", text).casefold())
    return [w for w in words if w not in STOPWORDS]


def read_pages(path: str | Path) -> list[Page]:
    """Read a pages JSONL (`url`, `title`, `text`); a bad line raises ValueError naming the line and field."""
    pages: list[Page] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON: {e}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object")
            for key in ("url", "text"):
                if not isinstance(row.get(key), str) or not row[key]:
                    raise ValueError(f"{path}:{n}: field {key!r} must be a non-empty string")
            title = row.get("title", "")
            if not isinstance(title, str):
                raise ValueError(f"{path}:{n}: field 'title' must be a string")
            if row["url"] in seen:
                raise ValueError(f"{path}:{n}: duplicate url {row['url']!r}")
            seen.add(row["url"])
            pages.append(Page(url=row["url"], title=title, text=row["text"]))
    return pages


def build_text_index(pages: str | Path | list[Page], out_dir: str | Path) -> Path:
    """Index pages (a JSONL path or a list of `Page`) into `out_dir`; returns `out_dir`."""
    bm25s = _bm25s()

    plist = read_pages(pages) if isinstance(pages, (str, Path)) else list(pages)
    if not plist:
        raise ValueError(f"text index: no pages in {pages}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    retriever = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    retriever.index([tokenize(p.title + "\n" + p.text) or ["\u2205"] for p in plist], show_progress=False)
    retriever.save(str(out / "bm25"))
    with open(out / "pages.jsonl", "w", encoding="utf-8") as f:
        for p in plist:
            f.write(json.dumps({"url": p.url, "title": p.title, "text": p.text}, ensure_ascii=False) + "\n")
    meta = {"format": FORMAT_VERSION, "n_pages": len(plist), "tokenizer": "nfkc-casefold-words-en-stop"}
    (out / INDEX_META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    log.info("text index: %d pages -> %s", len(plist), out)
    return out


def resolve_index_dir(index_dir: str | Path | None, meta_name: str, sub: str) -> Path:
    """`index_dir` itself if it holds `meta_name`, else `index_dir/sub`; FileNotFoundError otherwise."""
    p = Path(index_dir)
    for cand in (p, p / sub):
        if (cand / meta_name).is_file():
            return cand
    raise FileNotFoundError(
        f"no {sub} index at {str(p)!r} (expected {meta_name} there or in {sub}/; "
        "build one with `mmsearch-r1 search index`)"
    )


def _need_dir(index_dir: str | None, where: str) -> None:
    if not index_dir:
        raise ValueError(
            f"search config {where}: type 'local' needs index_dir, the folder written by "
            "`mmsearch-r1 search index --out DIR`"
        )


# Corpora loaded in this process, by resolved index dir: lets `LocalReader()` without options find pages.
_LOADED: dict[str, dict[str, Page]] = {}
_LOADED_LOCK = threading.Lock()


class LocalTextBackend:
    """BM25 search over a persisted local index (see the module docstring)."""

    name = "local"

    def __init__(self, index_dir: str | None = None, snippet_chars: int = 200) -> None:
        bm25s = _bm25s()

        _need_dir(index_dir, "text_backend")
        self.index_dir = resolve_index_dir(index_dir, INDEX_META, "text")
        meta = json.loads((self.index_dir / INDEX_META).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"text index {self.index_dir}: format {meta.get('format')}, need {FORMAT_VERSION}"
            )
        self.pages = read_pages(self.index_dir / "pages.jsonl")
        self.retriever = bm25s.BM25.load(str(self.index_dir / "bm25"))
        self.snippet_chars = snippet_chars
        with _LOADED_LOCK:
            _LOADED[str(self.index_dir.resolve())] = {p.url: p for p in self.pages}

    def cache_params(self) -> dict[str, Any]:
        return {"index": str(self.index_dir.resolve()), "n_pages": len(self.pages)}

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every page for `query` (corpus order)."""
        toks = tokenize(query)
        if not toks:
            return np.zeros(len(self.pages), dtype=np.float32)
        return np.asarray(self.retriever.get_scores(toks), dtype=np.float32)

    def search(self, query: str, k: int) -> list[WebHit]:
        if k <= 0:
            return []
        scores = self.scores(query)
        order = np.argsort(-scores, kind="stable")[:k]
        hits = []
        for rank, i in enumerate(int(j) for j in order if scores[j] > 0):
            p = self.pages[i]
            snippet = " ".join(p.text[: self.snippet_chars].split())
            hits.append(WebHit(url=p.url, title=p.title, snippet=snippet, position=rank + 1, text=p.text))
        return hits


class LocalReader:
    """Pages by url from a local text index (see the module docstring)."""

    name = "local"

    def __init__(self, index_dir: str | None = None) -> None:
        self._pages: dict[str, Page] | None = None
        if index_dir is not None:
            d = resolve_index_dir(index_dir, INDEX_META, "text")
            self._pages = {p.url: p for p in read_pages(d / "pages.jsonl")}

    def read(self, url: str) -> Page:
        if self._pages is not None:
            page = self._pages.get(url)
        else:
            with _LOADED_LOCK:
                page = next((c[url] for c in _LOADED.values() if url in c), None)
        if page is None:
            raise SearchError(f"local reader: no page with url {url!r}", retryable=False, status=404)
        return page


_SENT_SPLIT = re.compile(r"(?<=[.!?\u3002])[\"')\]]*\s+|\n\s*\n|\n(?=\s*[-*\u2022])")


def split_sentences(text: str, max_sentence_chars: int = 400) -> list[str]:
    """Sentences of `text` (on . ! ? followed by space, blank lines, list items); long ones are cut."""
    out = []
    for s in _SENT_SPLIT.split(text):
        s = " ".join(s.split())
        if s:
            out.append(s if len(s) <= max_sentence_chars else s[: max_sentence_chars - 1].rstrip() + "\u2026")
    return out


class ExtractiveSummarizer:
    """Query-focused extractive summary (see the module docstring)."""

    name = "extractive"

    def __init__(self, max_sentences: int = 5, max_chars: int = 1200, max_page_chars: int = 30_000) -> None:
        if max_sentences < 1 or max_chars < 1:
            raise ValueError("extractive summarizer: max_sentences and max_chars must be >= 1")
        self.max_sentences = max_sentences
        self.max_chars = max_chars
        self.max_page_chars = max_page_chars

    def cache_params(self) -> dict[str, Any]:
        return {
            "max_sentences": self.max_sentences,
            "max_chars": self.max_chars,
            "pages": self.max_page_chars,
        }

    def summarize(self, page: Page, question: str, query: str) -> str:
        sents = split_sentences(page.text[: self.max_page_chars])
        if not sents:
            return ""
        sent_toks = [set(tokenize(s)) for s in sents]
        weight: dict[str, float] = {}
        for w in tokenize(question):
            weight[w] = 1.0
        for w in tokenize(query):
            weight[w] = 2.0
        n = len(sents)
        idf = {w: math.log(1.0 + n / (1.0 + sum(w in t for t in sent_toks))) for w in weight}
        scores = [sum(weight[w] * idf[w] for w in t if w in weight) for t in sent_toks]
        ranked = sorted((i for i in range(n) if scores[i] > 0), key=lambda i: (-scores[i], i))
        chosen = ranked[: self.max_sentences] or list(range(min(2, n)))
        picked: list[int] = []
        used = 0
        for i in chosen:  # best first, while they fit; then restore page order
            cost = len(sents[i]) + (1 if picked else 0)
            if used + cost > self.max_chars:
                continue
            picked.append(i)
            used += cost
        if not picked:
            return sents[chosen[0]][: self.max_chars]
        return " ".join(sents[i] for i in sorted(picked))


TEXT_BACKENDS.register("local")(LocalTextBackend)
READERS.register("local")(LocalReader)
SUMMARIZERS.register("extractive")(ExtractiveSummarizer)
