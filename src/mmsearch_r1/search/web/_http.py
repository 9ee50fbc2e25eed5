"""Shared plumbing for the web API clients: secrets that never print, URL scrubbing, one HTTP call.

- `Secret` (from `search/secrets.py`) holds an API key; `api_key_from(explicit, env_name)` reads it. A logging
  filter applying `secrets.scrub` is installed on the `httpx` and `httpcore` loggers (httpx logs each request
  URL at INFO, and SerpApi puts the key in the URL).
- `UpstreamGuard` is the error handling the clients share: `calls`/`errors` counting and the permanent stop
  after a `BackendStopped`.
- `ApiHttp.send` makes one request with explicit connect/read timeouts and maps transport failures to
  retryable `SearchError`s whose messages name the service and never the URL's query string.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from mmsearch_r1.search.base import BackendStopped, Counters, SearchError
from mmsearch_r1.search.secrets import Secret, scrub

__all__ = [
    "ApiHttp", "Secret", "UpstreamGuard", "api_key_from", "error_text", "json_or_error", "scrub", "stop_or_raise",
]  # fmt: skip

T = TypeVar("T")
log = logging.getLogger(__name__)


def api_key_from(explicit: str | None, env_name: str | None, *, required: bool, service: str) -> Secret:
    """The key given explicitly, else from the environment variable env_name; error if required and absent."""
    value = explicit if explicit is not None else (os.environ.get(env_name, "") if env_name else "")
    if required and not value:
        raise ValueError(f"{service}: no API key; set the environment variable {env_name!r} or pass api_key")
    return Secret(value)


class _ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is not ours to fix
            return True
        clean = scrub(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


_FILTER = _ScrubFilter()
for _name in ("httpx", "httpcore"):
    if not any(isinstance(f, _ScrubFilter) for f in logging.getLogger(_name).filters):
        logging.getLogger(_name).addFilter(_FILTER)


class ApiHttp:
    """One httpx client per backend, with explicit timeouts and no environment proxies by default."""

    def __init__(
        self,
        service: str,
        *,
        connect_timeout_s: float = 5.0,
        timeout_s: float = 30.0,
        trust_env: bool = False,
        max_connections: int = 32,
    ) -> None:
        self.service = service
        self.client = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            trust_env=trust_env,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    def send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        # The error is raised outside the except blocks so that it has no __context__: httpx's exception
        # carries the request, whose URL holds the key.
        try:
            return self.client.request(method, url, **kwargs)
        except httpx.TimeoutException as e:
            err = SearchError(f"{self.service}: timed out ({type(e).__name__})", retryable=True)
        except httpx.TransportError as e:
            err = SearchError(f"{self.service}: network error ({type(e).__name__})", retryable=True)
        raise err

    def close(self) -> None:
        self.client.close()


def json_or_error(resp: httpx.Response, service: str) -> Any:
    """Parse a JSON body; malformed JSON is a non-retryable SearchError naming the service and status."""
    try:
        return resp.json()
    except ValueError:
        raise SearchError(
            f"{service}: malformed JSON in HTTP {resp.status_code} response", status=resp.status_code
        ) from None


def error_text(data: Any) -> str:
    """The error message of an API error body (`{"error": "..."}` or `{"error": {"message": ...}}`)."""
    if isinstance(data, dict):
        err = data.get("error", data.get("message", data.get("readableMessage", "")))
        if isinstance(err, dict):
            err = err.get("message", "") or err.get("code", "")
        return scrub(str(err))[:300]
    return ""


def stop_or_raise(service: str, status: int, message: str, *, stop: bool, retryable: bool) -> SearchError:
    """Build the error for an HTTP failure (BackendStopped when stop)."""
    text = f"{service}: HTTP {status}" + (f": {message}" if message else "")
    if stop:
        return BackendStopped(text, status=status)
    return SearchError(text, retryable=retryable, status=status)


class UpstreamGuard:
    """The error handling the web clients share: count `calls` and `errors`, and stop for good after a
    `BackendStopped` (bad key, out of credit): every later call fails fast, counted, without a request."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.stopped: BackendStopped | None = None

    def check(self) -> None:
        """Raise (counted as an error) when stopped."""
        if self.stopped is not None:
            self.counters.incr("errors")
            raise BackendStopped(str(self.stopped), status=self.stopped.status)

    def stop(self, err: BackendStopped) -> None:
        self.stopped = err

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` as one counted upstream call; a BackendStopped stops this upstream."""
        self.check()
        self.counters.incr("calls")
        try:
            return fn(*args)
        except BackendStopped as e:
            self.stopped = e
            self.counters.incr("errors")
            log.error("%s", e)
            raise
        except SearchError:
            self.counters.incr("errors")
            raise
