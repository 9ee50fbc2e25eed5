"""Answer normalization and string matching for the outcome reward (exact match and SubEM).

`normalize_answer` follows the paper's rule (lowercase, drop punctuation, drop the articles a/an/the, collapse
whitespace) with two Unicode-aware refinements: the text is NFKC-normalized first (full-width letters, ligatures
and non-breaking spaces become their plain forms) and lowercasing uses `str.casefold`; punctuation is every
ASCII punctuation/symbol character of `string.punctuation` plus every Unicode punctuation character (category
P*: curly quotes, dashes, ...). Punctuation is deleted, not replaced by a space ("New-York" -> "newyork"), as in
the paper. Accents are kept ("café" != "cafe").

A prediction that normalizes to "" never matches, and a gold answer that normalizes to "" (for example "The")
is ignored: otherwise an empty answer would count as correct, and with SubEM an empty gold would match anything.

The original profile (`ProtocolConfig.profile = "original"`) matches with `normalize_answer_original`: plain
`str.lower`, only ASCII punctuation dropped (Unicode punctuation is kept), the words a/an/the dropped where they
stand between word boundaries, whitespace collapsed; and `exact_match_original` / `sub_exact_match_original`
let strings that normalise to the same value match, even when that value is empty.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections.abc import Iterable
from typing import Any

_ARTICLES = frozenset({"a", "an", "the"})
_ASCII_PUNCT = frozenset(string.punctuation)


def _is_punct(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str) -> str:
    """Normalize an answer for matching.

    >>> normalize_answer("  The  Eiffel-Tower! ")
    'eiffeltower'
    >>> normalize_answer("An   apple,\\na pear")
    'apple pear'
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in text if not _is_punct(ch))
    return " ".join(w for w in text.split() if w not in _ARTICLES)


_ARTICLE_RE = re.compile(r"\b(?:a|an|the)\b")


def normalize_answer_original(text: str) -> str:
    """The original profile's normalisation (module docstring).

    >>> normalize_answer_original("The “Eiffel-Tower”!")
    '“eiffeltower”'
    >>> normalize_answer_original("The")
    ''
    """
    text = "".join(ch for ch in text.lower() if ch not in _ASCII_PUNCT)
    return " ".join(_ARTICLE_RE.sub(" ", text).split())


def _golds_list(golds: str | Iterable[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else list(golds)


def exact_match_original(pred: str | None, golds: str | Iterable[str]) -> bool:
    """Original profile: normalised prediction equals a normalised gold (both may be empty)."""
    if pred is None:
        return False
    p = normalize_answer_original(pred)
    return any(normalize_answer_original(g) == p for g in _golds_list(golds))


def sub_exact_match_original(pred: str | None, golds: str | Iterable[str]) -> bool:
    """Original profile: a normalised gold is a substring of the normalised prediction (an empty gold always is)."""
    if pred is None:
        return False
    p = normalize_answer_original(pred)
    return any(normalize_answer_original(g) in p for g in _golds_list(golds))


def _normalized_golds(golds: str | Iterable[str]) -> list[str]:
    if isinstance(golds, str):
        golds = [golds]
    out = [normalize_answer(g) for g in golds]
    return [g for g in out if g]


def exact_match(pred: str | None, golds: str | Iterable[str]) -> bool:
    """True if the normalized prediction equals any normalized gold answer (see module notes on empties).

    >>> exact_match("the Louvre.", ["Louvre", "Musée du Louvre"])
    True
    """
    if pred is None:
        return False
    p = normalize_answer(pred)
    return bool(p) and p in _normalized_golds(golds)


def sub_exact_match(pred: str | None, golds: str | Iterable[str]) -> bool:
    """True if any normalized gold answer is a substring of the normalized prediction (character level).

    >>> sub_exact_match("It is the Louvre museum in Paris", ["Louvre Museum"])
    True
    """
    if pred is None:
        return False
    p = normalize_answer(pred)
    return bool(p) and any(g in p for g in _normalized_golds(golds))


def parse_candidates(value: Any) -> list[str]:
    """Turn a stored candidate-answer field into a list of strings.

    Rules:
    - None -> []; a string that is empty or only whitespace -> [].
    - A string holding a JSON list (e.g. '["Paris", "paris, france"]') -> its items; a string holding a JSON
      string ('"Paris"') -> [that string]. Any other string, including one that is not valid JSON or is JSON
      of another type (a number, an object), is ONE candidate: the string itself, stripped ("Paris" -> ["Paris"],
      "42" -> ["42"]).
    - Any other iterable (list, tuple, numpy array from parquet) -> its items.
    - Items: strings are stripped, numbers become their text (`str`), None and empty strings are dropped;
      anything else (dicts, nested lists) raises ValueError naming the item.

    >>> parse_candidates('["Paris", " paris, France "]')
    ['Paris', 'paris, France']
    >>> parse_candidates("Paris")
    ['Paris']
    """
    if value is None:
        return []
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text[0] in '["':
            try:
                decoded = json.loads(text)
            except json.JSONDecodeError:
                decoded = None
            if isinstance(decoded, list):
                return _items(decoded)
            if isinstance(decoded, str):
                return _items([decoded])
        return [text]
    if isinstance(value, Iterable):
        return _items(list(value))
    raise ValueError(f"candidate answers must be a list or a string, got {type(value).__name__}")


def _items(items: list[Any]) -> list[str]:
    out: list[str] = []
    for i, item in enumerate(items):
        if item is None:
            continue
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            if hasattr(item, "item") and not isinstance(item, (list, dict, tuple)):  # numpy scalars
                item = item.item()
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise ValueError(
                    f"candidate answer {i} must be a string, got {type(item).__name__}: {item!r}"
                )
        text = str(item).strip()
        if text:
            out.append(text)
    return out
