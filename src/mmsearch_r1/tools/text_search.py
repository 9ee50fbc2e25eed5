"""The text search tool: search -> read each page -> summarize it for the question, until top_k summaries.

`TextSearchTool(backend, reader, summarizer, top_k=5, max_page_chars=30000, max_candidates=10)(query, sample)`
runs the one text-search pipeline (`search/text_pipeline.py`, shared with the search service): it asks the backend for up to `max_candidates` hits, then goes down the list in order: a hit's page is `hit.text`
when the backend filled it, else `reader.read(hit.url)`; the page (capped at `max_page_chars`, as in the paper)
is summarized with `summarizer.summarize(page, sample.question, query)`. A page that fails to read or summarize,
or whose summary is empty, is skipped and the next URL is tried, until `top_k` summaries or the list runs out.
Pages are processed in waves of (top_k - summaries so far) in parallel threads; the observation keeps the
result-list order. The observation lists `"i. title\nURL: url\nSummary: ...\n\n"`, every piece sanitized.

Outcomes: a failing search -> ok=False (see `tools.base`); no hits -> ok=True, "no results"; hits but every
page failed -> ok=False ("could not read any of the N pages"). An empty or missing query -> ok=False telling the
model to give a query. Stats per call: calls, errors, latency_s, hits, pages_read, page_errors, summaries.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

from mmsearch_r1.search.base import Counters, PageReader, Summarizer, TextSearchBackend
from mmsearch_r1.search.text_pipeline import run_text_pipeline
from mmsearch_r1.tools.base import describe_error, failure
from mmsearch_r1.tools.sanitize import sanitize
from mmsearch_r1.types import Sample, ToolResult

log = logging.getLogger(__name__)


class TextSearchTool:
    name = "text_search"

    def __init__(
        self,
        backend: TextSearchBackend,
        reader: PageReader,
        summarizer: Summarizer,
        top_k: int = 5,
        max_page_chars: int = 30_000,
        max_candidates: int = 10,
        max_query_chars: int = 300,
        max_summary_chars: int = 2000,
        parallel: bool = True,
    ) -> None:
        if top_k < 1 or max_candidates < 1:
            raise ValueError("text search tool: top_k and max_candidates must be >= 1")
        self.backend = backend
        self.reader = reader
        self.summarizer = summarizer
        self.top_k = top_k
        self.max_page_chars = max_page_chars
        self.max_candidates = max(max_candidates, top_k)
        self.max_query_chars = max_query_chars
        self.max_summary_chars = max_summary_chars
        self.parallel = parallel
        self.counters = Counters()

    def __call__(self, arg: str | None, sample: Sample) -> ToolResult:
        t0 = time.perf_counter()
        stats: dict[str, float] = {
            "calls": 1, "errors": 0, "hits": 0, "pages_read": 0, "page_errors": 0, "summaries": 0,
        }  # fmt: skip
        query = " ".join((arg or "").split())[: self.max_query_chars]
        if not query:
            stats["errors"] = 1
            return self._done(
                ToolResult(
                    ["The text search needs a query; none was given.\n"], ok=False, error="empty query"
                ),
                stats,
                t0,
            )
        pool = ThreadPoolExecutor(max_workers=self.top_k) if self.parallel and self.top_k > 1 else None
        try:
            out = run_text_pipeline(
                self.backend,
                self.reader,
                self.summarizer,
                query,
                sample.question,
                self.top_k,
                max_candidates=self.max_candidates,
                max_page_chars=self.max_page_chars,
                pool=pool,
                clean=lambda text: sanitize(text, self.max_summary_chars),
            )
        except Exception as e:  # any backend failure becomes an error observation
            stats["errors"] = 1
            log.warning("text search failed for %r: %s", query[:80], describe_error(e))
            return self._done(failure("text search", describe_error(e), stats, 0.0), stats, t0)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        hits, done = out.hits, out.summaries
        stats["hits"] = len(hits)
        stats["pages_read"] = out.pages_read
        stats["page_errors"] = len(out.errors)
        if not hits:
            return self._done(
                ToolResult([f'The text search for "{sanitize(query)}" found nothing.\n']), stats, t0
            )
        stats["summaries"] = len(done)
        if not done:
            stats["errors"] = 1
            log.warning("text search %r: every page failed: %s", query[:80], "; ".join(out.errors)[:500])
            res = failure("text search", f"could not read any of the {len(hits)} pages", stats, 0.0)
            return self._done(res, stats, t0)
        parts = []
        for n, (i, summary) in enumerate(sorted(done), 1):
            hit = hits[i]
            title = sanitize(hit.title, 200) or "(untitled)"
            parts.append(f"{n}. {title}\nURL: {sanitize(hit.url, 500)}\nSummary: {summary}\n\n")
        return self._done(ToolResult(["".join(parts).rstrip("\n") + "\n"]), stats, t0)

    def _done(self, res: ToolResult, stats: dict[str, float], t0: float) -> ToolResult:
        stats["latency_s"] = time.perf_counter() - t0
        res.latency_s = stats["latency_s"]
        res.stats = stats
        for k, v in stats.items():
            self.counters.incr(k, v)
        return res
