"""What a run directory holds, for the Runs tab: metrics files, trajectory files, evaluation pairs.

`scan_run(root)` looks at `root` and its sub-directories (up to `MAX_DEPTH` levels; a training, SFT or
evaluation run directory, or the demo's output holding several) and returns a `RunIndex`:

- `metrics`: label -> `metrics.jsonl` (label = the directory relative to root, "." for root itself);
- `trajectories`: label -> file, for every evaluation `samples.jsonl` ("eval/grpo: evaluation") and every
  training trace `traces/step_NNNN.jsonl` ("grpo: step 3");
- `evaluations`: the labels of the evaluation files, for the side-by-side comparison (the demo's
  `eval/sft` and `eval/grpo` come first in that order).

Files are read through the project's readers: `eval.report.load_metrics`/`series` for metrics and
`eval.records.read_records` for trajectories. Nothing here writes into the run directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_DEPTH = 3
_STEP = re.compile(r"^step_(\d+)\.jsonl$")
_SKIP = {"checkpoints", "final", "model", "world", "report", "__pycache__"}

# The curve panels of the Runs tab: title -> metric key prefixes/names (those logged are drawn).
CURVES: dict[str, tuple[str, ...]] = {
    "Reward": ("reward/mean", "reward/acc", "reward/format", "reward/penalty"),
    "Search ratio by source": ("search/ratio_any", "search/ratio_any/", "val/*/search_ratio_any"),
    "Accuracy": ("acc/", "val/*/acc"),
    "KL and losses": ("actor/kl", "actor/pg_loss", "actor/entropy", "sft/loss"),
    "Lengths": (
        "rollout/response_tokens_mean",
        "rollout/assistant_tokens_mean",
        "rollout/turns_mean",
        "sft/tokens",
    ),
}


@dataclass
class RunIndex:
    root: Path
    metrics: dict[str, Path] = field(default_factory=dict)
    trajectories: dict[str, Path] = field(default_factory=dict)
    evaluations: list[str] = field(default_factory=list)


def _label(root: Path, d: Path) -> str:
    rel = d.relative_to(root).as_posix()
    return rel if rel else "."


def scan_run(root: str | Path) -> RunIndex:
    """See the module docstring. FileNotFoundError when `root` is not a directory."""
    r = Path(root).expanduser()
    if not r.is_dir():
        raise FileNotFoundError(f"run directory not found: {r}")
    idx = RunIndex(r)
    _walk(r, r, 0, idx)
    order = {"eval/sft": 0, "eval/grpo": 1}
    idx.evaluations.sort(key=lambda lab: (order.get(lab.split(":")[0], 2), lab))
    return idx


def _walk(root: Path, d: Path, depth: int, idx: RunIndex) -> None:
    if (d / "metrics.jsonl").is_file():
        idx.metrics[_label(root, d)] = d / "metrics.jsonl"
    if (d / "samples.jsonl").is_file():
        label = f"{_label(root, d)}: evaluation"
        idx.trajectories[label] = d / "samples.jsonl"
        idx.evaluations.append(label)
    traces = d / "traces"
    if traces.is_dir():
        steps = sorted(
            (int(m.group(1)), p) for p in traces.iterdir() if (m := _STEP.match(p.name)) and p.is_file()
        )
        for step, p in steps:
            idx.trajectories[f"{_label(root, d)}: step {step}"] = p
    if depth >= MAX_DEPTH:
        return
    for sub in sorted(p for p in d.iterdir() if p.is_dir() and p.name not in _SKIP and p.name != "traces"):
        _walk(root, sub, depth + 1, idx)


def _matches(key: str, pattern: str) -> bool:
    if "*" in pattern:
        head, tail = pattern.split("*", 1)
        return key.startswith(head) and key.endswith(tail)
    return key.startswith(pattern) if pattern.endswith("/") else key == pattern


def curve_table(metrics_path: Path, patterns: tuple[str, ...]) -> list[dict[str, Any]]:
    """Long-form rows {step, metric, value} of the keys matching `patterns` (for a line plot)."""
    from mmsearch_r1.eval.report import load_metrics, series

    s = series(load_metrics(metrics_path))
    rows = []
    for key in sorted(s):
        if any(_matches(key, p) for p in patterns):
            rows += [{"step": step, "metric": key, "value": value} for step, value in s[key]]
    return rows
