"""Where a tail (search-required) answer breaks, from an evaluation's `samples.jsonl` on the demo's world
(docs/demo.md, "Why the demo is fragile").

A tail question is answered through a chain: image search -> the name copied from the first result's title into
the reason ("The first result is Dobel Tarn.") -> for fact questions, the name copied again into the text query
-> the fact read from the page summary (for name questions, the name copied into the answer).

    tail_chain(path) -> {"name_n", "name_copied", "name_right", "fact_n", "fact_copied", "fact_query_ok",
                         "fact_right", "fact_right_when_query_ok"}

`*_copied`: the reason names the first image result's title; `fact_query_ok`: the text query is that title.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_TITLE = re.compile(r"1\. (.+?) - ")
_REASON_NAME = re.compile(r"The first result is (.+?)\.</reason>")
_QUERY = re.compile(r"<text_search>(.*?)</text_search>")
KEYS = (
    "name_n",
    "name_copied",
    "name_right",
    "fact_n",
    "fact_copied",
    "fact_query_ok",
    "fact_right",
    "fact_right_when_query_ok",
)


def _first(pattern: re.Pattern[str], texts: list[str]) -> str | None:
    for t in texts:
        m = pattern.search(t)
        if m:
            return m.group(1).strip()
    return None


def tail_chain(samples_path: str | Path) -> dict[str, int]:
    """Counts over the tail questions of `samples_path` (module docstring); ValueError naming the line of a record
    without the fields an evaluation writes."""
    c = dict.fromkeys(KEYS, 0)
    path = Path(samples_path)
    with path.open(encoding="utf-8") as fh:
        for no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                r: dict[str, Any] = json.loads(line)
                source, question, em, turns = r["data_source"], r["question"], r["em"], r["turns"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{no}: not an evaluation record ({e})") from None
            if source != "world_tail":
                continue
            texts = [t.get("text") or "" for t in turns]
            title = _first(_TITLE, [t.get("observation") or "" for t in turns])
            copied = title is not None and _first(_REASON_NAME, texts) == title
            kind = "name" if "name" in question else "fact"
            c[f"{kind}_n"] += 1
            c[f"{kind}_copied"] += copied
            c[f"{kind}_right"] += bool(em)
            if kind == "fact":
                query_ok = title is not None and _first(_QUERY, texts) == title
                c["fact_query_ok"] += query_ok
                c["fact_right_when_query_ok"] += bool(em) and query_ok
    return c
