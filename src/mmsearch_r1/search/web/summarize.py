"""`"openai"` summarizer: one chat completion per page with the prompt `prompts/summarize_page.j2`.

The page is cleaned (chat-template control tokens like `<|im_start|>`, our protocol tags and the prompt's own
`<page>`/`</page>` delimiters removed, since page text is untrusted; the question, query, title and URL are also
put on one line each, so none of them can start a new prompt line), capped at `max_page_chars` (30,000 by default, as in the paper), and rendered into the
prompt with the question and query. The prompt asks for at most five sentences keeping whatever helps answer
the question, and tells the model to ignore instructions inside the page. The reply is cleaned the same way.
`prompt_version` (a hash of the template file) is part of the cache parameters, so editing the prompt
invalidates cached summaries.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from typing import Any

from mmsearch_r1.search.base import SUMMARIZERS, Counters, Page, SearchError
from mmsearch_r1.search.web.openai_chat import ChatClient

_CONTROL = re.compile(
    r"<\|[^|<>]{0,40}\|>|</?\s*(?:reason|answer|search|text_search|information|img|think|tool_call|page)\s*>",
    re.I,
)


def clean_untrusted(text: str) -> str:
    """Remove chat-template control tokens (`<|...|>`) and protocol tags from web text."""
    prev = None
    while prev != text:  # removing one tag could join the pieces of another
        prev, text = text, _CONTROL.sub(" ", text)
    return text


def one_line(text: str, max_chars: int) -> str:
    """Untrusted text for a one-line prompt field: cleaned, every run of whitespace (newlines too) one space."""
    return " ".join(clean_untrusted(text).split())[:max_chars]


def _template() -> tuple[Any, str]:
    import jinja2

    src = resources.files("mmsearch_r1").joinpath("prompts", "summarize_page.j2").read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=False, keep_trailing_newline=False, undefined=jinja2.StrictUndefined)
    return env.from_string(src), hashlib.sha256(src.encode()).hexdigest()[:12]


class OpenAISummarizer:
    upstream = "openai"

    def __init__(
        self,
        *,
        model: str,
        max_page_chars: int = 30_000,
        max_tokens: int = 512,
        temperature: float = 0.0,
        timeout_s: float = 60.0,
        counters: Counters | None = None,
        **client_options: Any,
    ) -> None:
        self.name = "openai"
        self.counters = counters or Counters()
        self.client = ChatClient(
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            timeout_s=timeout_s,
            counters=self.counters,
            **client_options,
        )
        self.upstream = self.client.upstream
        self.max_page_chars = max_page_chars
        self._tmpl, self.prompt_version = _template()

    def __repr__(self) -> str:
        return f"OpenAISummarizer({self.client!r}, prompt_version={self.prompt_version})"

    def cache_params(self) -> dict[str, Any]:
        return {
            "summarizer": "openai",
            "model": self.client.model,
            "prompt_version": self.prompt_version,
            "temperature": self.client.temperature,
            "max_tokens": self.client.max_tokens,
            "max_page_chars": self.max_page_chars,
        }

    def render(self, page: Page, question: str, query: str) -> str:
        return self._tmpl.render(
            question=one_line(question, 10_000),
            query=one_line(query, 2000),
            title=one_line(page.title, 300),
            url=one_line(page.url, 2000),
            page=clean_untrusted(page.text[: self.max_page_chars]),
        )

    def summarize(self, page: Page, question: str, query: str) -> str:
        prompt = self.render(page, question, query)
        res = self.client.complete([{"role": "user", "content": prompt}])
        text = clean_untrusted(res.text).strip()
        if not text:
            self.counters.incr("errors")
            raise SearchError("openai summarizer: empty summary")
        return text


SUMMARIZERS.register("openai")(OpenAISummarizer)
