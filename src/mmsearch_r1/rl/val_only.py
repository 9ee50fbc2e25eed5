"""`trainer.val_only`: evaluate the starting policy on `data.val_files` and save every generation; no training.

Runs the trainer's own validation (greedy, one response per question, the configured protocol profile, tools and
reward) once, as step 0, and writes:

- `SAVE_DIR/generations_rank{R}.jsonl`: one line per question this rank answered: the evaluation record
  (question, gold, final answer, reward and its components, finish reason, actions) plus `trajectory`, the
  decoded turns and tool calls (`Trajectory.to_json`);
- `RUN_DIR/val/step_0000.json` (the summary) and one metrics line (step 0) in `RUN_DIR/metrics.jsonl`.

`SAVE_DIR` is `trainer.val_only_save_dir`, or `RUN_DIR/val_only` when empty. Files are written to a temporary
name and renamed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mmsearch_r1.config import Config


def save_dir_for(cfg: Config, run: Path) -> Path:
    return Path(cfg.trainer.val_only_save_dir) if cfg.trainer.val_only_save_dir else run / "val_only"


def save_generations(save_dir: Path, rank: int, trajs: Sequence[Any], records: Sequence[dict]) -> Path:
    """Write this rank's generations (one JSON line each); returns the file."""
    save_dir.mkdir(parents=True, exist_ok=True)
    path = save_dir / f"generations_rank{rank}.jsonl"
    tmp = path.with_suffix(f".jsonl.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        for traj, record in zip(trajs, records, strict=True):
            fh.write(json.dumps({**record, "trajectory": traj.to_json()}, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def run_val_only(
    cfg: Config,
    model: Any,
    renderer: Any,
    info: Any,
    run: Path,
    validate: Callable[..., dict[str, float]],
    engine_hook: Callable[[Any, Any], Any] | None = None,
) -> Any:
    """The val_only branch of `rl.trainer.train` (module docstring); returns the trainer's `TrainResult`."""
    from mmsearch_r1.data.reader import read_many
    from mmsearch_r1.rl.metrics import MetricLogger
    from mmsearch_r1.rl.trainer import TrainResult
    from mmsearch_r1.rollout.engines import build_engine
    from mmsearch_r1.rollout.loop import AgentLoop
    from mmsearch_r1.tools import build_tools

    val_samples = read_many(cfg.data.val_files).samples
    if not val_samples:
        raise ValueError(f"trainer.val_only: no samples in data.val_files={cfg.data.val_files}")
    if model is not None:
        model.eval()
    m = cfg.model
    engine = build_engine(
        cfg.rollout, renderer, model=model, model_path=m.path, dtype=m.compute_dtype, seed=cfg.trainer.seed
    )
    if engine_hook is not None:
        engine = engine_hook(engine, renderer)
    tools = build_tools(cfg.search)

    def loop_factory(params: Any) -> AgentLoop:
        return AgentLoop(
            engine=engine,
            renderer=renderer,
            tools=tools,
            protocol=cfg.protocol,
            rollout=cfg.rollout,
            params=params,
        )

    save_dir = save_dir_for(cfg, run)
    try:
        metrics = validate(cfg, loop_factory, val_samples, info, run, 0, save_dir=save_dir)
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()
    if info.is_main:
        logger = MetricLogger(
            run,
            tensorboard=cfg.trainer.log_tensorboard,
            wandb=cfg.trainer.log_wandb,
            wandb_project=cfg.trainer.wandb_project,
        )
        logger.log(0, metrics)
        logger.close()
    return TrainResult(run, 0, None, run / "metrics.jsonl")
