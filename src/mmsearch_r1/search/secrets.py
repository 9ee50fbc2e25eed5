"""API keys that never print, and redaction of secrets wherever config or errors are written.

- `Secret(value)`: an API key whose repr/str are `'***'`; `.value` gives the key to the one request that
  sends it. Every secret of 6 characters or more is registered, and `scrub(text)` replaces each registered value
  and any `api_key=` / `key=` / `token=` query value or `Bearer` token in a string.
- `SearchError` (search/base.py) scrubs its message, so a key an upstream echoes back (in an error body, a
  JINA warning, ...) never reaches an exception, a log line or a trace.
- `redact_secrets(data)`: a copy of a config mapping in which the value of every secret-named key (`api_key`,
  `token`, `password`, `secret`, names ending in `_api_key` / `_token` / `_secret`) is the marker `REDACTED`
  and every other string is scrubbed. `save_config` and the wandb config use it; a config that still holds the
  marker is refused at load (`find_redacted`), since the key is gone: give it through the environment.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

REDACTED = "<redacted>"

_SECRETS: set[str] = set()
_LOCK = threading.Lock()
_PATTERNS = [
    re.compile(r"(?i)(api_key|apikey|key|token)=([^&\s\"'#]+)"),
    re.compile(r"(?i)(bearer\s+)([A-Za-z0-9._~+/=-]+)"),
]
_SECRET_NAME = re.compile(r"(?i)^(api_?key|token|password|secret)$|_(api_?key|token|secret|password)$")


def register(value: str) -> None:
    """Remember a secret value so that `scrub` removes it (shorter than 6 characters: not a real key)."""
    if len(value) >= 6:
        with _LOCK:
            _SECRETS.add(value)


def scrub(text: str) -> str:
    """Remove every registered secret and any key-looking query value or bearer token from text."""
    with _LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for s in secrets:
        text = text.replace(s, "***")
    for pat in _PATTERNS:
        text = pat.sub(
            lambda m: m.group(1) + ("" if m.group(1).lower().startswith("bearer") else "=") + "***", text
        )
    return text


class Secret:
    """An API key. Prints as '***'; `.value` gives the key to the one place that sends it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register(value)

    @property
    def value(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


def is_secret_name(name: str) -> bool:
    """True for a config key that holds a secret value (`api_key`, `token`, `openai_api_key`, ...)."""
    return bool(_SECRET_NAME.search(name))


def redact_secrets(data: Any) -> Any:
    """A copy of data with secret-named values replaced by REDACTED and registered secrets scrubbed."""
    if isinstance(data, Mapping):
        out = {}
        for k, v in data.items():
            secret = isinstance(k, str) and is_secret_name(k) and v not in (None, "")
            out[k] = REDACTED if secret else redact_secrets(v)
        return out
    if isinstance(data, (list, tuple)):
        return [redact_secrets(v) for v in data]
    if isinstance(data, str):
        return scrub(data)
    return data


def find_redacted(data: Any, where: str = "") -> list[str]:
    """Dotted paths of every value equal to REDACTED (a saved config whose keys were removed)."""
    if isinstance(data, Mapping):
        return [p for k, v in data.items() for p in find_redacted(v, f"{where}.{k}" if where else str(k))]
    if isinstance(data, (list, tuple)):
        return [p for i, v in enumerate(data) for p in find_redacted(v, f"{where}[{i}]")]
    return [where] if data == REDACTED else []
