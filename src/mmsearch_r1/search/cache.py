"""Persistent SQLite cache for search results, page text and summaries, and the cached backend wrappers.

`SQLiteCache(path)`: one table `entries(ns, key, value, created)` in WAL mode, one connection per thread (so it
is safe across threads) and SQLite's own locking with a busy timeout (so it is safe across processes).
Namespaces: `"search"` (text and image results), `"page"` (page text), `"summary"`. A key is the sha256 of the
canonical JSON of its parts: the normalized query (NFKC, whitespace collapsed, casefolded) or image key
(`ImageQuery.cache_key()`: pixel hash, url or sample id), k, and the backend's `cache_params()` (engine,
hl/gl, model, prompt version, ...), which never hold an API key. Values are JSON; thumbnails are stored as
base64 of their encoded bytes. Only successes are cached (an empty result list is a success); errors are not.

`CachedTextBackend`, `CachedImageBackend`, `CachedReader`, `CachedSummarizer` are backends: a hit returns the
stored value without calling the inner backend and counts `cache_hits` on the shared `counters`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import sqlite3
import threading
import time
import unicodedata
from typing import Any

from mmsearch_r1.search.base import Counters, ImageHit, ImageQuery, Page, WebHit
from mmsearch_r1.types import ImageData

log = logging.getLogger(__name__)

NAMESPACES = ("search", "page", "summary")


def normalize_query(q: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", q).split()).casefold()


def make_key(parts: dict[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class SQLiteCache:
    """Key-value cache in one SQLite file; thread- and process-safe."""

    def __init__(self, path: str, *, timeout_s: float = 30.0) -> None:
        self.path = str(path)
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        conn = self._conn()
        with conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS entries (ns TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
                " created REAL NOT NULL, PRIMARY KEY (ns, key))"
            )

    def __repr__(self) -> str:
        return f"SQLiteCache({self.path!r})"

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def get(self, ns: str, parts: dict[str, Any]) -> Any | None:
        """The stored JSON value, or None on a miss."""
        _check_ns(ns)
        row = (
            self._conn()
            .execute("SELECT value FROM entries WHERE ns=? AND key=?", (ns, make_key(parts)))
            .fetchone()
        )
        return None if row is None else json.loads(row[0])

    def put(self, ns: str, parts: dict[str, Any], value: Any) -> None:
        _check_ns(ns)
        data = json.dumps(value, ensure_ascii=False)
        conn = self._conn()
        with conn:
            conn.execute(
                "INSERT OR REPLACE INTO entries (ns, key, value, created) VALUES (?, ?, ?, ?)",
                (ns, make_key(parts), data, time.time()),
            )

    def count(self, ns: str | None = None) -> int:
        if ns is None:
            return self._conn().execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        return self._conn().execute("SELECT COUNT(*) FROM entries WHERE ns=?", (ns,)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for c in conns:
            try:
                c.close()
            except sqlite3.ProgrammingError:  # closed from another thread
                pass
        self._local = threading.local()


def _check_ns(ns: str) -> None:
    if ns not in NAMESPACES:
        raise ValueError(f"unknown cache namespace {ns!r}; known: {', '.join(NAMESPACES)}")


def _params(inner: Any) -> dict[str, Any]:
    fn = getattr(inner, "cache_params", None)
    return fn() if callable(fn) else {"name": getattr(inner, "name", type(inner).__name__)}


# --- (de)serialization -------------------------------------------------------------------------------------


def webhits_to_json(hits: list[WebHit]) -> list[dict[str, Any]]:
    return [
        {"url": h.url, "title": h.title, "snippet": h.snippet, "position": h.position, "text": h.text}
        for h in hits
    ]


def webhits_from_json(rows: list[dict[str, Any]]) -> list[WebHit]:
    return [WebHit(**r) for r in rows]


def _image_bytes(img: ImageData) -> bytes:
    if img.bytes is not None:
        return img.bytes
    if img.path is not None:
        with open(img.path, "rb") as f:
            return f.read()
    raise ValueError("thumbnail has no bytes and no path")


def imagehits_to_json(hits: list[ImageHit]) -> list[dict[str, Any]]:
    out = []
    for h in hits:
        thumb = None
        if isinstance(h.thumbnail, ImageData):
            thumb = base64.b64encode(_image_bytes(h.thumbnail)).decode("ascii")
        out.append(
            {
                "title": h.title,
                "url": h.url,
                "thumbnail_b64": thumb,
                "thumbnail_url": h.thumbnail_url,
                "source": h.source,
                "score": h.score,
            }
        )
    return out


def imagehits_from_json(rows: list[dict[str, Any]]) -> list[ImageHit]:
    hits = []
    for r in rows:
        r = dict(r)
        b64 = r.pop("thumbnail_b64", None)
        thumb = ImageData(bytes=base64.b64decode(b64), url=r.get("thumbnail_url")) if b64 else None
        hits.append(ImageHit(thumbnail=thumb, **r))
    return hits


# --- cached wrappers ---------------------------------------------------------------------------------------


class _Cached:
    def __init__(self, inner: Any, cache: SQLiteCache) -> None:
        self.inner = inner
        self.cache = cache
        self.name = inner.name
        self.counters: Counters = getattr(inner, "counters", None) or Counters()

    def cache_params(self) -> dict[str, Any]:
        return _params(self.inner)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r}, {self.cache!r})"

    def _lookup(self, ns: str, parts: dict[str, Any]) -> Any | None:
        try:
            value = self.cache.get(ns, parts)
        except sqlite3.Error as e:  # a broken cache must not break search
            log.warning("cache read failed (%s); calling the backend", e)
            return None
        if value is not None:
            self.counters.incr("cache_hits")
        return value

    def _store(self, ns: str, parts: dict[str, Any], value: Any) -> None:
        try:
            self.cache.put(ns, parts, value)
        except sqlite3.Error as e:
            log.warning("cache write failed: %s", e)


class CachedTextBackend(_Cached):
    def search(self, query: str, k: int) -> list[WebHit]:
        parts = {"kind": "text", "q": normalize_query(query), "k": k, "backend": self.cache_params()}
        hit = self._lookup("search", parts)
        if hit is not None:
            return webhits_from_json(hit)
        hits = self.inner.search(query, k)
        self._store("search", parts, webhits_to_json(hits))
        return hits


class CachedImageBackend(_Cached):
    def search(self, query: ImageQuery, k: int) -> list[ImageHit]:
        parts = {"kind": "image", "image": query.cache_key(), "k": k, "backend": self.cache_params()}
        hit = self._lookup("search", parts)
        if hit is not None:
            return imagehits_from_json(hit)
        hits = self.inner.search(query, k)
        self._store("search", parts, imagehits_to_json(hits))
        return hits


class CachedReader(_Cached):
    def read(self, url: str) -> Page:
        parts = {"url": url, "reader": self.cache_params()}
        hit = self._lookup("page", parts)
        if hit is not None:
            return Page(**hit)
        page = self.inner.read(url)
        self._store("page", parts, {"url": page.url, "title": page.title, "text": page.text})
        return page


class CachedSummarizer(_Cached):
    def summarize(self, page: Page, question: str, query: str) -> str:
        parts = {
            "url": page.url,
            "page_sha256": hashlib.sha256(page.text.encode("utf-8")).hexdigest(),
            "question": normalize_query(question),
            "query": normalize_query(query),
            "summarizer": self.cache_params(),
        }
        hit = self._lookup("summary", parts)
        if hit is not None:
            return str(hit)
        text = self.inner.summarize(page, question, query)
        self._store("summary", parts, text)
        return text
