"""Training metrics: per-trajectory rows -> namespaced step metrics, and the loggers that write them.

`trajectory_row(traj, reward, sample)` reduces one trajectory to plain floats; `rollout_metrics(rows)` turns the
rows of a step (all ranks' rows, gathered) into the documented keys (docs/training.md):

- `reward/{mean,acc,format,penalty}`: means of the reward total and its components over trajectories;
- `acc/<data_source>`: answer accuracy per data source; `acc/searched`, `acc/direct`: accuracy of the
  trajectories that searched / answered without searching (0 when there are none);
- `search/{ratio_any,ratio_image_only,ratio_text_only,ratio_both,per_traj}`: share of trajectories that made
  any / only image / only text / both kinds of search; searches per trajectory; `search/ratio_any/<data_source>`:
  the share that searched, per data source;
- `tool/{error_ratio_image,error_ratio_text}`: failed calls / calls of each tool (0 without calls);
- `rollout/{turns_mean,assistant_tokens_mean,response_tokens_mean,finish_<reason>}`: turns, sampled
  (mask-1) tokens and all response tokens per trajectory, share of each finish reason.

`MetricLogger` writes one JSON line per step to `RUN_DIR/metrics.jsonl` (always), and to TensorBoard
(`trainer.log_tensorboard`) and wandb (`trainer.log_wandb`, imported lazily; a missing wandb is an error that
says so) when asked. Only rank 0 creates a logger.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmsearch_r1.rollout.trajectory import FINISH_REASONS

log = logging.getLogger(__name__)


def trajectory_row(traj: Any, reward: Any, data_source: str) -> dict[str, Any]:
    """Plain-float summary of one trajectory and its `RewardOutput` (picklable; gathered across ranks)."""
    calls = [t.tool for t in traj.turns if t.tool is not None]
    img = [c for c in calls if c.name == "image_search"]
    txt = [c for c in calls if c.name == "text_search"]
    return {
        "source": data_source,
        "reward": float(reward.total),
        "acc": float(reward.components.get("acc", 0.0)),
        "format": float(reward.components.get("format", 0.0)),
        "penalty": float(reward.components.get("penalty", 1.0)),
        "n_image": len(img),
        "n_text": len(txt),
        "err_image": sum(1 for c in img if not c.ok),
        "err_text": sum(1 for c in txt if not c.ok),
        "turns": len(traj.turns),
        "assistant_tokens": int(sum(traj.loss_mask)),
        "response_tokens": len(traj.response_ids),
        "finish": traj.finish_reason or "error",
    }


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


def _searched(row: Mapping[str, Any]) -> bool:
    return row["n_image"] + row["n_text"] > 0


def rollout_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Step metrics from trajectory rows (see the module docstring for the keys)."""
    n = len(rows)
    out: dict[str, float] = {
        "reward/mean": _mean([r["reward"] for r in rows]),
        "reward/acc": _mean([r["acc"] for r in rows]),
        "reward/format": _mean([r["format"] for r in rows]),
        "reward/penalty": _mean([r["penalty"] for r in rows]),
    }
    by_source: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        by_source[r["source"]].append(r)
    for src, rs in sorted(by_source.items()):
        out[f"acc/{src}"] = _mean([r["acc"] for r in rs])
        out[f"search/ratio_any/{src}"] = _mean([float(_searched(r)) for r in rs])
    out["acc/searched"] = _mean([r["acc"] for r in rows if _searched(r)])
    out["acc/direct"] = _mean([r["acc"] for r in rows if not _searched(r)])
    img = [r["n_image"] > 0 for r in rows]
    txt = [r["n_text"] > 0 for r in rows]
    out["search/ratio_any"] = _mean([float(a or b) for a, b in zip(img, txt, strict=True)])
    out["search/ratio_image_only"] = _mean([float(a and not b) for a, b in zip(img, txt, strict=True)])
    out["search/ratio_text_only"] = _mean([float(b and not a) for a, b in zip(img, txt, strict=True)])
    out["search/ratio_both"] = _mean([float(a and b) for a, b in zip(img, txt, strict=True)])
    out["search/per_traj"] = _mean([float(r["n_image"] + r["n_text"]) for r in rows])
    calls_i, calls_t = sum(r["n_image"] for r in rows), sum(r["n_text"] for r in rows)
    out["tool/error_ratio_image"] = sum(r["err_image"] for r in rows) / calls_i if calls_i else 0.0
    out["tool/error_ratio_text"] = sum(r["err_text"] for r in rows) / calls_t if calls_t else 0.0
    out["rollout/turns_mean"] = _mean([float(r["turns"]) for r in rows])
    out["rollout/assistant_tokens_mean"] = _mean([float(r["assistant_tokens"]) for r in rows])
    out["rollout/response_tokens_mean"] = _mean([float(r["response_tokens"]) for r in rows])
    for reason in FINISH_REASONS:
        out[f"rollout/finish_{reason}"] = sum(1 for r in rows if r["finish"] == reason) / n if n else 0.0
    out["rollout/n_trajectories"] = float(n)
    return out


SEARCH_COMPONENTS = (("image", "image_search", "backend"), ("text", "text_search", "backend"),
                     ("read", "text_search", "reader"), ("summarize", "text_search", "summarizer"))  # fmt: skip
SEARCH_COUNTERS = ("calls", "errors", "retries", "collapsed")


def search_counters(tools: Mapping[str, Any]) -> dict[str, float]:
    """Process totals `search/{image,text,read,summarize}/{calls,errors,retries,collapsed}` from the search
    backends' own counters (retries and collapsed come from `search.resilience`; errors are calls that failed
    after retries). The trainer logs per-step differences of these."""
    out: dict[str, float] = {}
    for kind, tool_name, attr in SEARCH_COMPONENTS:
        comp = getattr(tools.get(tool_name), attr, None)
        counters = getattr(comp, "counters", None)
        for name in SEARCH_COUNTERS:
            out[f"search/{kind}/{name}"] = float(counters.get(name)) if counters is not None else 0.0
    return out


class MetricLogger:
    """JSONL always; TensorBoard and wandb on request. `log(step, metrics)`; `close()` at the end."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        tensorboard: bool = False,
        wandb: bool = False,
        wandb_project: str = "mmsearch-r1",
        config: Mapping[str, Any] | None = None,
        append: bool = False,
        resume_step: int | None = None,
    ) -> None:
        """`resume_step=S` (a resumed run): keep the rows of steps <= S from an existing file (a torn last line
        is dropped, with a warning), rewritten atomically, then append; they are not sent to TensorBoard or
        wandb again. Else `append=False` starts an empty file."""
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            old = read_metrics(self.path, drop_torn_tail=True) if self.path.is_file() else []
            kept = "".join(json.dumps(r) + "\n" for r in old if r["step"] <= resume_step)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(kept, encoding="utf-8")
            tmp.replace(self.path)
        elif not append:
            self.path.write_text("")
        self.tb = None
        self.wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_mod
            except ImportError as e:
                raise ValueError(
                    "trainer.log_wandb=true but wandb is not installed (pip install wandb)"
                ) from e
            from mmsearch_r1.search.secrets import redact_secrets

            self.wandb = wandb_mod.init(
                project=wandb_project,
                dir=str(run_dir),
                config=redact_secrets(dict(config or {})),
                resume="allow",
            )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, float(v), step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(dict(metrics), step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(path: str | Path, *, drop_torn_tail: bool = False) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl file; a bad line is a ValueError naming the file and line.

    A process killed while writing leaves a torn last line (no newline, not JSON): with `drop_torn_tail` it is
    dropped with a warning, since every complete row before it is intact."""
    p = Path(path)
    text = p.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    rows: list[dict[str, Any]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not an object with an integer 'step'")
        except (json.JSONDecodeError, ValueError) as e:
            torn = n == len(lines) and not text.endswith("\n")
            if torn and drop_torn_tail:
                log.warning(
                    "%s line %d: dropped a torn last line (%d chars; killed while writing?)", p, n, len(line)
                )
                break
            hint = " (a torn last line: resume drops it)" if torn else ""
            raise ValueError(f"{p} line {n}: not a metrics row ({e}){hint}") from None
        rows.append(row)
    return rows
