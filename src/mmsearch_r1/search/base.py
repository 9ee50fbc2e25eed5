"""Search backend contracts (layer 2, no torch).

A text search goes: `TextSearchBackend.search(query, k)` -> hits (url, title, snippet) ->
`PageReader.read(url)` -> page text -> `Summarizer.summarize(page, question, query)` -> a few sentences.
An image search goes: `ImageSearchBackend.search(ImageQuery, k)` -> hits (thumbnail, title, page url).

Backends are synchronous and thread-safe; the agent loop calls them from worker threads, so identical
requests in flight can be collapsed and a concurrency limit shared. Caches, rate limits and retries are
wrappers that are themselves backends. A backend signals failure by raising `SearchError` (retryable or
not) or `BackendStopped` (bad key, out of credit: every later call fails fast with the same message).
The tools layer turns every such error into an error observation; nothing raises into the rollout.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from mmsearch_r1.registry import Registry
from mmsearch_r1.search.secrets import scrub
from mmsearch_r1.types import ImageData


@dataclass
class WebHit:
    """One result of a text search. Local backends may fill `text` (the page) directly."""

    url: str
    title: str
    snippet: str = ""
    position: int = 0
    text: str | None = None


@dataclass
class Page:
    url: str
    title: str
    text: str


@dataclass
class ImageHit:
    """One result of an image search: a thumbnail (decoded lazily) and the title/url of its page."""

    title: str
    url: str = ""
    thumbnail: ImageData | None = None
    thumbnail_url: str | None = None
    source: str = ""
    score: float | None = None


@dataclass
class ImageQuery:
    """The image to search with. `key` (e.g. the sample id) identifies it for replay caches."""

    image: ImageData | None = None
    url: str | None = None
    key: str | None = None

    def cache_key(self) -> str:
        """Key for result caches: the pixels' hash when we have the image, else the url, else the key."""
        if self.image is not None:
            return "sha256:" + self.image.content_hash()
        if self.url:
            return "url:" + self.url
        if self.key:
            return "key:" + self.key
        raise ValueError("image query has no image, url or key")


class SearchError(Exception):
    """A failed search. `retryable` marks timeouts, 5xx and throughput 429s.

    The message is scrubbed of every registered API key (`search/secrets.py`): upstreams echo keys back."""

    def __init__(self, message: str, *, retryable: bool = False, status: int | None = None) -> None:
        super().__init__(scrub(str(message)))
        self.retryable = retryable
        self.status = status


class BackendStopped(SearchError):
    """The backend cannot serve any more requests (bad key, out of searches, out of credit)."""


@runtime_checkable
class TextSearchBackend(Protocol):
    name: str

    def search(self, query: str, k: int) -> list[WebHit]: ...


@runtime_checkable
class ImageSearchBackend(Protocol):
    name: str

    def search(self, query: ImageQuery, k: int) -> list[ImageHit]: ...


@runtime_checkable
class PageReader(Protocol):
    name: str

    def read(self, url: str) -> Page: ...


@runtime_checkable
class Summarizer(Protocol):
    name: str

    def summarize(self, page: Page, question: str, query: str) -> str: ...


@dataclass
class Counters:
    """Thread-safe counters (calls, cache_hits, errors, retries, credits, tokens, ...)."""

    _c: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def incr(self, name: str, n: float = 1) -> None:
        with self._lock:
            self._c[name] += n

    def get(self, name: str) -> float:
        with self._lock:
            return self._c[name]

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._c)


# Registries of named components; each factory takes keyword options from the search config.
TEXT_BACKENDS: Registry[TextSearchBackend] = Registry("text search backend")
IMAGE_BACKENDS: Registry[ImageSearchBackend] = Registry("image search backend")
READERS: Registry[PageReader] = Registry("page reader")
SUMMARIZERS: Registry[Summarizer] = Registry("summarizer")
