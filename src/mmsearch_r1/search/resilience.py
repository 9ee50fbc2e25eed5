"""Resilience wrappers that are themselves backends: in-flight collapse, retries, one concurrency limit per upstream.

`Guard.call(key, fn)` runs `fn` as follows:
1. in-flight collapse: if an identical call (same `key`) is running, wait for it and return its result or
   raise its error (counted as `collapsed`); otherwise become the leader;
2. retries: on a `SearchError` with `retryable=True` (timeouts, 5xx, throughput 429) retry up to
   `max_attempts` attempts in all, sleeping `min(max_backoff_s, backoff_s * 2**i)` times a random jitter factor
   in [0.5, 1.0] (counted as `retries`); `BackendStopped` and non-retryable errors go up at once;
3. concurrency: each attempt holds one slot of the semaphore shared by everything talking to the same upstream
   (`limiter(upstream, n)`, process-wide, created on first use; a later request for a larger n does not grow it);
   back-off sleeps happen outside the slot.

`ResilientTextBackend`, `ResilientImageBackend`, `ResilientReader`, `ResilientSummarizer` wrap the four kinds
of backends with a `Guard`, keep the inner `name`, `counters` and `cache_params()`, and add nothing else.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from mmsearch_r1.search.base import (
    BackendStopped,
    Counters,
    ImageHit,
    ImageQuery,
    Page,
    SearchError,
    WebHit,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_LIMITERS: dict[str, threading.BoundedSemaphore] = {}
_LIMITERS_LOCK = threading.Lock()


def limiter(upstream: str, n: int) -> threading.BoundedSemaphore:
    """The process-wide semaphore for one upstream (created with n slots on first use)."""
    if n < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {n}")
    with _LIMITERS_LOCK:
        if upstream not in _LIMITERS:
            _LIMITERS[upstream] = threading.BoundedSemaphore(n)
        return _LIMITERS[upstream]


class _Flight:
    __slots__ = ("done", "result", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class Guard:
    """Collapse + retry + concurrency limit around calls to one upstream."""

    def __init__(
        self,
        upstream: str,
        *,
        max_concurrency: int = 8,
        max_attempts: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        collapse: bool = True,
        counters: Counters | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.upstream = upstream
        self.semaphore = limiter(upstream, max_concurrency)
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.collapse = collapse
        self.counters = counters or Counters()
        self._sleep = sleep
        self._flights: dict[str, _Flight] = {}
        self._lock = threading.Lock()

    def call(self, key: str | None, fn: Callable[[], T]) -> T:
        if not self.collapse or key is None:
            return self._retrying(fn)
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
        assert flight is not None
        if not leader:
            self.counters.incr("collapsed")
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.result
        try:
            flight.result = self._retrying(fn)
            return flight.result
        except BaseException as e:
            flight.error = e
            raise
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()

    def _retrying(self, fn: Callable[[], T]) -> T:
        for attempt in range(self.max_attempts):
            try:
                with self.semaphore:
                    return fn()
            except BackendStopped:
                raise
            except SearchError as e:
                if not e.retryable or attempt + 1 >= self.max_attempts:
                    raise
                delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
                self.counters.incr("retries")
                log.warning("%s: retrying after %.2fs (attempt %d): %s", self.upstream, delay, attempt + 1, e)
                self._sleep(delay)
        raise AssertionError("unreachable")


def _params(inner: Any) -> dict[str, Any]:
    fn = getattr(inner, "cache_params", None)
    return fn() if callable(fn) else {"name": getattr(inner, "name", type(inner).__name__)}


class _Wrapped:
    def __init__(self, inner: Any, guard: Guard) -> None:
        self.inner = inner
        self.guard = guard
        self.name = inner.name
        self.counters: Counters = getattr(inner, "counters", None) or guard.counters
        guard.counters = self.counters

    def cache_params(self) -> dict[str, Any]:
        return _params(self.inner)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r}, upstream={self.guard.upstream!r})"


class ResilientTextBackend(_Wrapped):
    def search(self, query: str, k: int) -> list[WebHit]:
        return self.guard.call(f"{k}\x00{query}", lambda: self.inner.search(query, k))


class ResilientImageBackend(_Wrapped):
    def search(self, query: ImageQuery, k: int) -> list[ImageHit]:
        return self.guard.call(f"{k}\x00{query.cache_key()}", lambda: self.inner.search(query, k))


class ResilientReader(_Wrapped):
    def read(self, url: str) -> Page:
        return self.guard.call(url, lambda: self.inner.read(url))


class ResilientSummarizer(_Wrapped):
    def summarize(self, page: Page, question: str, query: str) -> str:
        key = "\x00".join((page.url, str(hash(page.text)), question, query))
        return self.guard.call(key, lambda: self.inner.summarize(page, question, query))


def resilient(kind: str, inner: Any, **guard_options: Any) -> Any:
    """Wrap inner (kind: text | image | reader | summarizer) with a Guard on its `upstream` (or its name)."""
    cls = {
        "text": ResilientTextBackend,
        "image": ResilientImageBackend,
        "reader": ResilientReader,
        "summarizer": ResilientSummarizer,
    }[kind]
    upstream = getattr(inner, "upstream", None) or f"{kind}:{inner.name}"
    return cls(inner, Guard(upstream, **guard_options))


__all__ = [
    "Guard",
    "limiter",
    "resilient",
    "ResilientTextBackend",
    "ResilientImageBackend",
    "ResilientReader",
    "ResilientSummarizer",
]
