"""The one reader of saved trajectories: evaluation `samples.jsonl` and training `traces/step_NNNN.jsonl`.

Both files hold one JSON object per line whose `turns` are `Trajectory.to_json` turns (text, parsed action,
refusal, the tool call with its observation text; thumbnails appear as `<image>` in the text and by size under
`images`, never as pixels). They differ in the rest:

- an evaluation line (`eval.summary.sample_record`): `id`, `data_source`, `category`, `gold`, `final_answer`,
  `em`, `subem`, `reward`, `finish_reason`, ...
- a trace line (`rl.trainer`): `sample_id`, `group_index`, `finish_reason`, `reward`, `data_source` (written
  since the app exists; older traces lack it and read as ""), no gold answers.

`read_records(path)` turns either into `TrajectoryRecord`s. A line that is not valid JSON, not an object, or has
no `turns` list is not a record: it is reported in `RecordFile.problems` ("FILE line N: ...") and skipped, so a
file cut by a crash still shows what it holds. A missing file is a `FileNotFoundError`.

"Correct" is exact match for an evaluation line and a positive accuracy reward component for a trace line;
"searched" is the one predicate of the metrics: at least one image or text search was carried out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsearch_r1.protocol import extract_final_answer

SEARCH_TOOLS = ("image_search", "text_search")
_STEP = re.compile(r"step_(\d+)\.jsonl$")


@dataclass
class TrajectoryRecord:
    """One saved trajectory, the same fields whatever file it came from."""

    source: str  # the file
    line: int  # 1-based line in the file
    kind: str  # "eval" or "trace"
    id: str
    question: str
    turns: list[dict[str, Any]]
    data_source: str = ""
    category: str | None = None
    gold: list[str] = field(default_factory=list)
    final_answer: str | None = None
    correct: bool | None = None  # None: the file does not say (a trace without an accuracy component)
    reward: dict[str, float] = field(default_factory=dict)
    finish_reason: str | None = None
    error: str | None = None
    step: int | None = None  # training step of a trace
    group_index: int = 0
    images: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_image_searches(self) -> int:
        return sum(1 for t in self.turns if (t.get("tool") or {}).get("name") == "image_search")

    @property
    def n_text_searches(self) -> int:
        return sum(1 for t in self.turns if (t.get("tool") or {}).get("name") == "text_search")

    @property
    def searched(self) -> bool:
        return self.n_image_searches + self.n_text_searches > 0

    @property
    def label(self) -> str:
        mark = {True: "correct", False: "wrong", None: "?"}[self.correct]
        tag = f"{self.id}#{self.group_index}" if self.kind == "trace" else self.id
        src = f" [{self.data_source}]" if self.data_source else ""
        return f"{tag}{src} {mark}, {'searched' if self.searched else 'no search'}: {self.question[:60]}"


@dataclass
class RecordFile:
    path: Path
    records: list[TrajectoryRecord]
    problems: list[str]


def _gold(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        out = [obj.get("ground_truth")] + list(obj.get("candidates") or [])
        return [str(g) for g in out if g not in (None, "")]
    if isinstance(obj, list):
        return [str(g) for g in obj]
    return [str(obj)] if obj not in (None, "") else []


def _reward(obj: Any) -> dict[str, float]:
    if not isinstance(obj, dict):
        return {}
    return {
        str(k): float(v) for k, v in obj.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def record_from_json(obj: dict[str, Any], *, source: str = "", line: int = 0) -> TrajectoryRecord:
    """A `TrajectoryRecord` from one parsed line; ValueError naming the field when it is not a trajectory."""
    turns = obj.get("turns")
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise ValueError("field 'turns' is missing or not a list of objects")
    reward = _reward(obj.get("reward"))
    is_eval = "em" in obj or "gold" in obj
    texts = [str(t.get("text", "")) for t in turns]
    if is_eval:
        correct: bool | None = bool(obj.get("em"))
        final = obj.get("final_answer")
    else:
        correct = reward["acc"] > 0 if "acc" in reward else None
        final = extract_final_answer(texts)
    step = None
    m = _STEP.search(source)
    if m:
        step = int(m.group(1))
    return TrajectoryRecord(
        source=source,
        line=line,
        kind="eval" if is_eval else "trace",
        id=str(obj.get("id", obj.get("sample_id", ""))),
        question=str(obj.get("question", "")),
        turns=turns,
        data_source=str(obj.get("data_source") or ""),
        category=obj.get("category"),
        gold=_gold(obj.get("gold")),
        final_answer=final,
        correct=correct,
        reward=reward,
        finish_reason=obj.get("finish_reason"),
        error=obj.get("error"),
        step=step,
        group_index=int(obj.get("group_index", 0) or 0),
        images=list(obj.get("images") or []),
    )


def read_records(path: str | Path) -> RecordFile:
    """Every trajectory of a samples/traces JSONL file, and a message per line that is not one."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"trajectory file not found: {p}")
    records: list[TrajectoryRecord] = []
    problems: list[str] = []
    with p.open(encoding="utf-8", errors="replace") as fh:
        for lineno, text in enumerate(fh, 1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                problems.append(f"{p.name} line {lineno}: not valid JSON ({e.msg}); skipped")
                continue
            if not isinstance(obj, dict):
                problems.append(f"{p.name} line {lineno}: not a JSON object; skipped")
                continue
            try:
                records.append(record_from_json(obj, source=str(p), line=lineno))
            except ValueError as e:
                problems.append(f"{p.name} line {lineno}: {e}; skipped")
    return RecordFile(p, records, problems)


def filter_records(
    records: Iterable[TrajectoryRecord],
    *,
    data_source: str | None = None,
    searched: bool | None = None,
    correct: bool | None = None,
    min_reward: float | None = None,
    max_reward: float | None = None,
) -> list[TrajectoryRecord]:
    """The records matching every given criterion (None = any). Reward bounds apply to `reward['total']`."""
    out = []
    for r in records:
        if data_source is not None and r.data_source != data_source:
            continue
        if searched is not None and r.searched != searched:
            continue
        if correct is not None and r.correct is not correct:
            continue
        total = r.reward.get("total")
        if min_reward is not None and (total is None or total < min_reward):
            continue
        if max_reward is not None and (total is None or total > max_reward):
            continue
        out.append(r)
    return out
