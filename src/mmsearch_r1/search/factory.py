"""Build the search backends from `SearchConfig`.

`cfg.text_backend` is `{"type": <text backend>, ...options, "reader": {"type": ..., ...}, "summarizer": {...}}`
and `cfg.image_backend` is `{"type": <image backend>, ...options}`. Every component dict may also hold these
wrapper options, which are removed before the backend is built:
- `"retry": {"max_attempts": 3, "backoff_s": 0.5, "max_backoff_s": 8.0}`,
- `"max_concurrency": n` (default `cfg.max_concurrency`; one semaphore per upstream, shared process-wide),
- `"cache": bool` (default: true for web components, false for local ones: `local`, `replay`, `extractive`).
Defaults: reader `"local"` and summarizer `"extractive"` for a local text backend, reader `"jina"` and
summarizer `"extractive"` otherwise. `timeout_s` defaults to `cfg.timeout_s` for components that accept it.

Every web page reader (any reader type but `local`, `replay`, `extractive` and `service`) is wrapped, outermost,
by the SSRF guard (`ssrf.guard_reader`): a URL from search results that resolves to a non-global address is
refused before it reaches JINA, the fetcher, the cache or a retry. `allow_hosts: [...]` in a reader's dict is
its allow-list (tests with loopback targets only).

Wrapping order (outermost first): SSRF guard (web readers) -> cache (when `cfg.cache_path` is set and caching is on) -> in-flight collapse +
retries + concurrency limit (`resilience.Guard`) -> the backend. N identical concurrent misses are collapsed
into one upstream call; each caller then writes the same value to the cache.
Backend modules are imported here, lazily, so their registries are filled only when needed.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from typing import Any

from mmsearch_r1.config import SearchConfig
from mmsearch_r1.search.base import (
    IMAGE_BACKENDS,
    READERS,
    SUMMARIZERS,
    TEXT_BACKENDS,
    ImageSearchBackend,
    PageReader,
    Summarizer,
    TextSearchBackend,
)

log = logging.getLogger(__name__)

_MODULES = (
    "mmsearch_r1.search.local_text",
    "mmsearch_r1.search.local_image",
    "mmsearch_r1.search.replay",
    "mmsearch_r1.search.web.serpapi",
    "mmsearch_r1.search.web.jina",
    "mmsearch_r1.search.web.fetch",
    "mmsearch_r1.search.web.summarize",
    "mmsearch_r1.search.client",
)
LOCAL_TYPES = frozenset({"local", "replay", "extractive"})
_WRAPPER_KEYS = ("retry", "max_concurrency", "cache")
_CACHES: dict[str, Any] = {}


def load_backend_modules() -> list[str]:
    """Import every backend module that exists (filling the registries); returns the ones that failed."""
    missing = []
    for mod in _MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # a real missing dependency inside the module, not an absent module
                raise
            missing.append(mod)
    return missing


def _cache(cfg: SearchConfig) -> Any | None:
    if not cfg.cache_path:
        return None
    from mmsearch_r1.search.cache import SQLiteCache

    if cfg.cache_path not in _CACHES:
        _CACHES[cfg.cache_path] = SQLiteCache(cfg.cache_path)
    return _CACHES[cfg.cache_path]


def _build(kind: str, registry: Any, spec: dict[str, Any], cfg: SearchConfig, where: str) -> Any:
    from mmsearch_r1.search import cache as cache_mod
    from mmsearch_r1.search.resilience import resilient

    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"search config {where}: expected a dict with a 'type' key, got {spec!r}")
    opts = dict(spec)
    typ = opts.pop("type")
    retry = opts.pop("retry", None) or {}
    max_conc = opts.pop("max_concurrency", cfg.max_concurrency)
    use_cache = opts.pop("cache", typ not in LOCAL_TYPES)
    unknown_retry = set(retry) - {"max_attempts", "backoff_s", "max_backoff_s"}
    if unknown_retry:
        raise ValueError(f"search config {where}.retry: unknown keys {sorted(unknown_retry)}")
    try:
        factory = registry.get(typ)
    except KeyError as e:
        raise ValueError(f"search config {where}.type: {e.args[0]}") from None
    try:
        params = inspect.signature(factory).parameters
        if "timeout_s" in params and "timeout_s" not in opts:
            opts["timeout_s"] = cfg.timeout_s
    except (TypeError, ValueError):
        pass
    web_reader = kind == "reader" and typ not in LOCAL_TYPES and typ != "service"
    allow_hosts = (opts.get if typ == "fetch" else opts.pop)("allow_hosts", ()) if web_reader else ()
    try:
        inner = factory(**opts)
    except TypeError as e:
        raise ValueError(f"search config {where}: bad options for {typ!r}: {e}") from None
    wrapped = resilient(kind, inner, max_concurrency=max_conc, **retry)
    cache = _cache(cfg) if use_cache else None
    if cache is not None:
        wrapped = {
            "text": cache_mod.CachedTextBackend,
            "image": cache_mod.CachedImageBackend,
            "reader": cache_mod.CachedReader,
            "summarizer": cache_mod.CachedSummarizer,
        }[kind](wrapped, cache)
    if web_reader:  # outermost: a refused URL costs no request, no cache lookup and no retry
        from mmsearch_r1.search.ssrf import UrlPolicy, guard_reader

        return guard_reader(wrapped, UrlPolicy.make(allow_hosts))
    return wrapped


def build_text_pipeline(cfg: SearchConfig) -> tuple[TextSearchBackend, PageReader, Summarizer]:
    """(text search backend, page reader, summarizer) from `cfg.text_backend`, wrapped as described above."""
    load_backend_modules()
    spec = dict(cfg.text_backend)
    local = spec.get("type") in LOCAL_TYPES
    if spec.get("type") == "service":
        # the service runs the reader and summarizer too: default them to the same server, uncached here
        remote = {k: spec[k] for k in ("url", "token_env", "timeout_s") if k in spec}
        default_reader = {"type": "service", "cache": False, **remote}
        default_summ = {"type": "service", "cache": False, **remote}
        spec.setdefault("cache", False)
    else:
        default_reader = {"type": "local" if local else "jina"}
        default_summ = {"type": "extractive"}
    reader_spec = spec.pop("reader", None) or default_reader
    summ_spec = spec.pop("summarizer", None) or default_summ
    backend = _build("text", TEXT_BACKENDS, spec, cfg, "text_backend")
    reader = _build("reader", READERS, reader_spec, cfg, "text_backend.reader")
    summarizer = _build("summarizer", SUMMARIZERS, summ_spec, cfg, "text_backend.summarizer")
    return backend, reader, summarizer


def build_image_backend(cfg: SearchConfig) -> ImageSearchBackend:
    """The image search backend from `cfg.image_backend`, wrapped as described above."""
    load_backend_modules()
    return _build("image", IMAGE_BACKENDS, dict(cfg.image_backend), cfg, "image_backend")
