"""Client for any OpenAI-compatible `POST {base_url}/chat/completions` (vLLM, SGLang, hosted providers).

`ChatClient.complete(messages)` sends `{model, messages, temperature, max_tokens}` and returns the text of
`choices[0].message.content` plus the `usage` token counts (added to the `tokens`, `prompt_tokens` and
`completion_tokens` counters). The key (`OPENAI_API_KEY` by default, optional for local servers) goes only
into the `Authorization` header. Errors: 401/403 and 402, and 429 with code `insufficient_quota` ->
`BackendStopped` (every later call fails fast); other 429 and 5xx -> retryable; other 4xx and malformed JSON
or a reply without `choices[0].message.content` -> non-retryable `SearchError`. Reused by the LLM judge.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mmsearch_r1.search.base import Counters, SearchError
from mmsearch_r1.search.web._http import (
    ApiHttp,
    UpstreamGuard,
    api_key_from,
    error_text,
    json_or_error,
    stop_or_raise,
)

log = logging.getLogger(__name__)


@dataclass
class ChatResult:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None


class ChatClient:
    upstream = "openai"

    def __init__(
        self,
        *,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        require_key: bool = False,
        temperature: float = 0.0,
        max_tokens: int = 512,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        extra_body: dict[str, Any] | None = None,
        counters: Counters | None = None,
    ) -> None:
        if not model:
            raise ValueError("openai: `model` is required")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.upstream = "openai:" + self.base_url
        self._key = api_key_from(api_key, api_key_env, required=require_key, service="openai")
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.extra_body = dict(extra_body or {})
        self.counters = counters or Counters()
        self.http = ApiHttp("openai", connect_timeout_s=connect_timeout_s, timeout_s=timeout_s)
        self.guard = UpstreamGuard(self.counters)

    def __repr__(self) -> str:
        return f"ChatClient(base_url={self.base_url!r}, model={self.model!r}, key={'set' if self._key else 'none'})"

    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> ChatResult:
        return self.guard.call(self._complete, messages, temperature, max_tokens)

    def _complete(
        self, messages: list[dict[str, str]], temperature: float | None, max_tokens: int | None
    ) -> ChatResult:
        body = {
            **self.extra_body,
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature if temperature is None else temperature,
            "max_tokens": self.max_tokens if max_tokens is None else max_tokens,
        }
        headers = {"Authorization": "Bearer " + self._key.value} if self._key else {}
        resp = self.http.send("POST", self.base_url + "/chat/completions", json=body, headers=headers)
        status = resp.status_code
        if status != 200:
            try:
                payload = resp.json()
            except ValueError:
                payload = None
            msg = error_text(payload)
            code = payload.get("error", {}).get("code") if isinstance(payload, dict) else None
            quota = status == 429 and (code == "insufficient_quota" or "quota" in msg.lower())
            stop = status in (401, 402, 403) or quota
            raise stop_or_raise("openai", status, msg, stop=stop, retryable=(status == 429 or status >= 500))
        data = json_or_error(resp, "openai")
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError
        except (KeyError, IndexError, TypeError):
            raise SearchError("openai: reply has no choices[0].message.content", status=status) from None
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        total = int(usage.get("total_tokens") or pt + ct)
        self.counters.incr("tokens", total)
        self.counters.incr("prompt_tokens", pt)
        self.counters.incr("completion_tokens", ct)
        return ChatResult(
            text=text, prompt_tokens=pt, completion_tokens=ct, finish_reason=choice.get("finish_reason")
        )
