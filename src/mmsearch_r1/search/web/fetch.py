"""SSRF-safe fetching of attacker-chosen URLs, and the `"fetch"` page reader (our own fetch + trafilatura).

`SafeFetcher.fetch(url, kind)`:
- every hop (the first URL and each redirect target) passes `ssrf.check_url`, and the connection itself goes
  through `ssrf.GuardedTransport`, which re-resolves, re-checks and connects to the checked IP;
- redirects are followed by hand (301/302/303/307/308, at most `max_redirects`);
- the body is streamed raw and decompressed here (gzip/deflate only, we advertise only those) with a hard cap on
  *decompressed* bytes, so a compression bomb stops at the cap; a body over the cap is an error, not truncated
  for images, and truncated for pages (`truncate_pages=True`, the default) since the text head is still useful;
- content types are allow-listed per kind: pages take HTML/XHTML/plain text, images take `image/*` except SVG.

`FetchReader` (registered as reader `"fetch"`) fetches a page and extracts its main text with trafilatura
(falls back to the plain text for `text/plain`). The title comes from `<title>` or trafilatura's metadata.
"""

from __future__ import annotations

import html as html_lib
import logging
import re
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpx

from mmsearch_r1.search.base import READERS, Counters, Page, SearchError
from mmsearch_r1.search.ssrf import GuardedTransport, Resolver, UnsafeURLError, UrlPolicy, check_url

log = logging.getLogger(__name__)

PAGE_TYPES = ("text/html", "application/xhtml+xml", "text/plain")
REDIRECTS = (301, 302, 303, 307, 308)


@dataclass
class FetchResult:
    url: str
    final_url: str
    status: int
    content_type: str
    body: bytes
    truncated: bool = False


def _type_allowed(content_type: str, kind: str) -> bool:
    if kind == "image":
        return content_type.startswith("image/") and "svg" not in content_type
    return content_type in PAGE_TYPES


class SafeFetcher:
    """Fetch http(s) URLs with the SSRF guard, redirect re-checks, byte caps and content-type allow-lists."""

    def __init__(
        self,
        *,
        allow_hosts: list[str] | tuple[str, ...] = (),
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 15.0,
        max_redirects: int = 5,
        max_page_bytes: int = 3_000_000,
        max_image_bytes: int = 2_000_000,
        truncate_pages: bool = True,
        user_agent: str = "mmsearch-r1/0.1 (+research; fetches search results)",
        max_connections: int = 20,
        verify: bool | str = True,
        resolver: Resolver | None = None,
    ) -> None:
        self.policy = UrlPolicy.make(allow_hosts, resolver)
        self.max_redirects = max_redirects
        self.max_bytes = {"page": max_page_bytes, "image": max_image_bytes}
        self.truncate_pages = truncate_pages
        self._client = httpx.Client(
            transport=GuardedTransport(self.policy, max_connections=max_connections, verify=verify),
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": user_agent, "Accept-Encoding": "gzip, deflate"},
        )

    def __repr__(self) -> str:
        return f"SafeFetcher(allow_hosts={sorted(self.policy.allow_hosts)}, max_bytes={self.max_bytes})"

    def close(self) -> None:
        self._client.close()

    def fetch(self, url: str, kind: str = "page") -> FetchResult:
        """GET url (kind "page" or "image"). Raises UnsafeURLError (refused) or SearchError (failed)."""
        if kind not in self.max_bytes:
            raise ValueError(f"kind must be 'page' or 'image', got {kind!r}")
        current = url
        for _hop in range(self.max_redirects + 1):
            check_url(current, self.policy)
            try:
                with self._client.stream("GET", current) as resp:
                    if resp.status_code in REDIRECTS:
                        loc = resp.headers.get("location")
                        if not loc:
                            raise SearchError(
                                f"redirect without Location from {current}", status=resp.status_code
                            )
                        current = urljoin(current, loc)
                        continue
                    if resp.status_code != 200:
                        raise SearchError(
                            f"GET {current} returned HTTP {resp.status_code}",
                            retryable=resp.status_code >= 500 or resp.status_code == 429,
                            status=resp.status_code,
                        )
                    ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                    if not _type_allowed(ctype, kind):
                        raise SearchError(
                            f"refused content type {ctype or '(none)'!r} for {kind} at {current}"
                        )
                    body, truncated = self._read_capped(resp, kind, current)
                    return FetchResult(url, current, resp.status_code, ctype, body, truncated)
            except httpx.TimeoutException:
                raise SearchError(f"timeout fetching {current}", retryable=True) from None
            except httpx.TransportError as e:
                if isinstance(e.__context__, UnsafeURLError):
                    raise e.__context__ from None
                if "CERTIFICATE_VERIFY_FAILED" in str(e):
                    raise SearchError(f"TLS certificate verification failed for {current}: {e}") from None
                raise SearchError(
                    f"network error fetching {current}: {type(e).__name__}", retryable=True
                ) from None
        raise SearchError(f"too many redirects (>{self.max_redirects}) starting at {url}")

    def _read_capped(self, resp: httpx.Response, kind: str, url: str) -> tuple[bytes, bool]:
        cap = self.max_bytes[kind]
        enc = resp.headers.get("content-encoding", "identity").strip().lower()
        if enc in ("gzip", "x-gzip", "deflate"):
            dec = zlib.decompressobj(47)  # gzip or zlib header, auto-detected
        elif enc in ("identity", ""):
            dec = None
        else:
            raise SearchError(f"refused content encoding {enc!r} at {url}")
        out = bytearray()
        for raw in resp.iter_raw():
            if dec is None:
                out += raw
            else:
                data = raw
                while data and len(out) <= cap:
                    out += dec.decompress(data, cap + 1 - len(out))
                    data = dec.unconsumed_tail
            if len(out) > cap:
                if kind == "page" and self.truncate_pages:
                    return bytes(out[:cap]), True
                raise SearchError(f"{kind} at {url} is larger than the {cap}-byte cap")
        return bytes(out), False


_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.I | re.S)


def html_title(body: bytes) -> str:
    m = _TITLE.search(body[:200_000])
    if not m:
        return ""
    return " ".join(html_lib.unescape(m.group(1).decode("utf-8", "replace")).split())


def extract_main_text(body: bytes, content_type: str) -> tuple[str, str]:
    """(title, main text) of a fetched page; trafilatura for HTML, decoded text for text/plain."""
    if content_type == "text/plain":
        return "", body.decode("utf-8", "replace")
    import trafilatura

    # bytes in: trafilatura detects the page's own charset (meta tag or guess)
    text = trafilatura.extract(body, include_comments=False, include_tables=True, favor_recall=True) or ""
    return html_title(body), text


class FetchReader:
    """Page reader that fetches the page itself (SSRF-safe) and extracts the main text with trafilatura."""

    upstream = "fetch"

    def __init__(
        self,
        *,
        max_chars: int = 100_000,
        timeout_s: float | None = None,
        counters: Counters | None = None,
        **fetch_options: Any,
    ) -> None:
        """`timeout_s` (if given) is the read timeout; other options go to `SafeFetcher`."""
        if timeout_s is not None:
            fetch_options.setdefault("read_timeout_s", timeout_s)
        self.name = "fetch"
        self.max_chars = max_chars
        self.counters = counters or Counters()
        self.fetcher = SafeFetcher(**fetch_options)

    def cache_params(self) -> dict:
        return {"reader": "fetch", "max_chars": self.max_chars}

    def __repr__(self) -> str:
        return f"FetchReader({self.fetcher!r})"

    def read(self, url: str) -> Page:
        self.counters.incr("calls")
        try:
            res = self.fetcher.fetch(url, "page")
            title, text = extract_main_text(res.body, res.content_type)
        except SearchError:
            self.counters.incr("errors")
            raise
        text = text.strip()
        if not text:
            self.counters.incr("errors")
            raise SearchError(f"no main text extracted from {url}")
        return Page(url=url, title=title, text=text[: self.max_chars])


READERS.register("fetch")(FetchReader)
