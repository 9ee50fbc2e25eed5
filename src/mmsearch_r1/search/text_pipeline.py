"""The one text-search pipeline: search -> read each page -> summarize it, falling back over further URLs.

`run_text_pipeline(backend, reader, summarizer, query, question, k, ...)` is used by the text search tool
(`tools/text_search.py`) and by the search service's `/v1/text_search` (`search/service.py`), so both have the
same semantics and the same guards (the reader a factory builds is behind the SSRF guard, `ssrf.guard_reader`):

- ask the backend for `max(k, max_candidates)` hits (a failing search raises the backend's error);
- go down the list in order: a hit's page is `hit.text` when the backend filled it, else `reader.read(hit.url)`;
  the page, capped at `max_page_chars`, is summarized with `summarizer.summarize(page, question, query)`;
- a page that fails to read or summarize, or whose summary (after `clean`) is empty, is skipped and the next
  URL is tried, in waves of (k - summaries so far) run on `pool` when given, until k summaries or the list
  runs out. Summaries keep the result-list order.

Returns a `PipelineResult` (hits, summaries by hit index, per-page errors, pages read); the callers decide what
"hits but no summary" means (the tool: an error observation; the service: a 502).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from mmsearch_r1.search.base import Page, PageReader, Summarizer, TextSearchBackend, WebHit


@dataclass
class PipelineResult:
    hits: list[WebHit]
    summaries: list[tuple[int, str]] = field(default_factory=list)  # (hit index, summary), in hit order
    errors: list[str] = field(default_factory=list)  # "url: Type: message" per failed page
    pages_read: int = 0


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"


def run_text_pipeline(
    backend: TextSearchBackend,
    reader: PageReader,
    summarizer: Summarizer,
    query: str,
    question: str,
    k: int,
    *,
    max_candidates: int = 10,
    max_page_chars: int = 30_000,
    pool: Executor | None = None,
    clean: Callable[[str], str] = str.strip,
) -> PipelineResult:
    """Run the pipeline for one query (see the module docstring). Raises only when the search itself fails."""
    if k < 1 or max_candidates < 1:
        raise ValueError("text pipeline: k and max_candidates must be >= 1")
    n = max(k, max_candidates)
    res = PipelineResult(hits=list(backend.search(query, n))[:n])

    def one(hit: WebHit) -> tuple[str | None, bool, str | None]:
        try:
            page = Page(hit.url, hit.title, hit.text) if hit.text else reader.read(hit.url)
        except Exception as e:  # a bad page is skipped; the next URL is tried
            return None, False, _describe(e)
        try:
            capped = Page(page.url, page.title or hit.title, page.text[:max_page_chars])
            summary = clean(summarizer.summarize(capped, question, query))
        except Exception as e:
            return None, True, _describe(e)
        return (summary or None), True, (None if summary else "empty summary")

    nxt = 0
    hits = res.hits
    while len(res.summaries) < k and nxt < len(hits):
        wave = list(range(nxt, min(len(hits), nxt + k - len(res.summaries))))
        nxt = wave[-1] + 1
        outs = (
            list(pool.map(lambda i: one(hits[i]), wave)) if pool is not None else [one(hits[i]) for i in wave]
        )
        for i, (summary, read, err) in zip(wave, outs, strict=True):
            res.pages_read += int(read)
            if summary is None:
                res.errors.append(f"{hits[i].url}: {err}")
            else:
                res.summaries.append((i, summary))
    res.summaries.sort()
    return res
