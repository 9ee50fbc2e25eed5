"""`"jina"` page reader: JINA Reader (`GET {base_url}<target url>`), JSON or plain-text replies.

Request: `Accept: application/json` (configurable), optional `Authorization: Bearer <key>` (from `JINA_API_KEY`
or `api_key`), and the optional `X-Return-Format`, `X-Timeout`, `X-Max-Tokens`, `X-No-Cache`,
`X-Target-Selector`, `X-Remove-Selector` headers. Only http(s) targets are sent.
Parsing: JSON `{code, status, data: {title, url, content, warning?, usage: {tokens}}}`, or the plain-text format
(`Title:`, `URL Source:`, optional `Warning:`, then `Markdown Content:`). A "Target URL returned error" warning
inside a 200 is a failed read (non-retryable `SearchError` carrying the target's status). Empty content is a
failed read. Errors: 402 (out of credit) and 401/403 (bad key) -> `BackendStopped`, every later call fails fast;
429 and 5xx -> retryable; other 4xx -> non-retryable. `usage.tokens` is added to the `tokens` counter.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from mmsearch_r1.search.base import READERS, Counters, Page, SearchError
from mmsearch_r1.search.web._http import (
    ApiHttp,
    UpstreamGuard,
    api_key_from,
    error_text,
    json_or_error,
    stop_or_raise,
)

log = logging.getLogger(__name__)

_TARGET_ERROR = re.compile(r"target url returned error\s*(\d{3})?", re.I)


def parse_plain(text: str) -> dict[str, str]:
    """Split JINA's plain-text reply into title, url, warning and content."""
    out = {"title": "", "url": "", "warning": "", "content": ""}
    head, sep, body = text.partition("Markdown Content:")
    if not sep:
        head, body = "", text
    for line in head.splitlines():
        for field, label in (("title", "Title:"), ("url", "URL Source:"), ("warning", "Warning:")):
            if line.startswith(label):
                out[field] = (out[field] + " " + line[len(label) :].strip()).strip()
    out["content"] = body.strip()
    return out


class JinaReader:
    upstream = "jina"

    def __init__(
        self,
        *,
        base_url: str = "https://r.jina.ai/",
        api_key: str | None = None,
        api_key_env: str = "JINA_API_KEY",
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        accept: str = "application/json",
        return_format: str | None = "markdown",
        target_timeout_s: int | None = None,
        max_tokens: int | None = None,
        no_cache: bool = False,
        target_selector: str | None = None,
        remove_selector: str | None = None,
        max_chars: int = 100_000,
        counters: Counters | None = None,
    ) -> None:
        self.name = "jina"
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self._key = api_key_from(api_key, api_key_env, required=False, service="jina")
        self.max_chars = max_chars
        self.counters = counters or Counters()
        self.http = ApiHttp("jina", connect_timeout_s=connect_timeout_s, timeout_s=timeout_s)
        h = {"Accept": accept}
        for name, val in (
            ("X-Return-Format", return_format),
            ("X-Timeout", target_timeout_s),
            ("X-Max-Tokens", max_tokens),
            ("X-No-Cache", "true" if no_cache else None),
            ("X-Target-Selector", target_selector),
            ("X-Remove-Selector", remove_selector),
        ):
            if val is not None:
                h[name] = str(val)
        self.headers = h
        self.guard = UpstreamGuard(self.counters)

    def __repr__(self) -> str:
        return f"JinaReader(base_url={self.base_url!r}, headers={self.headers}, key={'set' if self._key else 'none'})"

    def cache_params(self) -> dict[str, Any]:
        return {"reader": "jina", "max_chars": self.max_chars, **{k: v for k, v in self.headers.items()}}

    def read(self, url: str) -> Page:
        self.guard.check()
        if not url.startswith(("http://", "https://")):
            raise SearchError(f"jina: refused non-http(s) URL {url[:100]!r}")
        return self.guard.call(self._read, url)

    def _read(self, url: str) -> Page:
        headers = dict(self.headers)
        if self._key:
            headers["Authorization"] = "Bearer " + self._key.value
        resp = self.http.send("GET", self.base_url + url, headers=headers)
        status = resp.status_code
        if status != 200:
            try:
                msg = error_text(resp.json())
            except ValueError:
                msg = ""
            stop = status in (401, 402, 403)
            raise stop_or_raise("jina", status, msg, stop=stop, retryable=status == 429 or status >= 500)
        ctype = resp.headers.get("content-type", "")
        if "json" in ctype or resp.text.lstrip().startswith("{"):
            body = json_or_error(resp, "jina")
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(data, dict):
                raise SearchError("jina: JSON reply has no data object", status=status)
            fields = {k: str(data.get(k) or "") for k in ("title", "url", "content", "warning")}
            tokens = (data.get("usage") or {}).get("tokens") if isinstance(data.get("usage"), dict) else None
            if isinstance(tokens, (int, float)):
                self.counters.incr("tokens", tokens)
        else:
            fields = parse_plain(resp.text)
        m = _TARGET_ERROR.search(fields["warning"]) or _TARGET_ERROR.search(fields["content"][:300])
        if m:
            code = int(m.group(1)) if m.group(1) else None
            raise SearchError(f"jina: target {url[:200]} failed: {fields['warning'][:200]}", status=code)
        if not fields["content"].strip():
            raise SearchError(f"jina: empty content for {url[:200]}")
        return Page(url=url, title=fields["title"], text=fields["content"][: self.max_chars])


READERS.register("jina")(JinaReader)
