"""Cleaning untrusted text (titles, snippets, summaries, urls) before it enters a model observation.

Removes, case-insensitively and with any whitespace inside the brackets:
- chat-template control tokens written as `<|...|>` (e.g. `<|im_start|>`, `<| endoftext |>`), and any stray
  `<|` or `|>` left over;
- our protocol tags (`protocol.PROTOCOL_TAG_NAMES`: reason, answer, search, img, text_search, information) and a
  few tags other chat formats use for tool calls or thinking (think, tool_call, tool_response), opening,
  closing or self-closing.
Removal repeats until nothing changes, since removing one tag can join the pieces of another. Whitespace runs are
collapsed to one space (newlines kept when `keep_newlines`), and the result can be capped in length.
"""

from __future__ import annotations

import re

from mmsearch_r1.protocol import PROTOCOL_TAG_NAMES

EXTRA_TAG_NAMES: tuple[str, ...] = ("think", "tool_call", "tool_response")
_NAMES = "|".join(re.escape(n) for n in (*PROTOCOL_TAG_NAMES, *EXTRA_TAG_NAMES))
_PATTERNS = (
    re.compile(r"<\s*\|[^<>]{0,64}?\|\s*>", re.S),
    re.compile(r"<\s*/?\s*(?:" + _NAMES + r")\s*/?\s*>", re.I),
    re.compile(r"<\s*\||\|\s*>"),
)


def strip_control(text: str) -> str:
    """`text` without control tokens or protocol tags (each replaced by a space), repeated to a fixed point."""
    prev = None
    while prev != text:
        prev = text
        for pat in _PATTERNS:
            text = pat.sub(" ", text)
    return text


def sanitize(text: str | None, max_chars: int | None = None, keep_newlines: bool = False) -> str:
    """Clean one untrusted string for an observation (see the module docstring)."""
    if not text:
        return ""
    text = strip_control(str(text))
    if keep_newlines:
        lines = (" ".join(line.split()) for line in text.splitlines())
        text = "\n".join(line for line in lines if line)
    else:
        text = " ".join(text.split())
    if max_chars is not None and len(text) > max_chars:
        text = text[: max(0, max_chars - 1)].rstrip() + "\u2026"
    return text
