"""Learning-rate schedules as a multiplicative factor of the base lr (`optim.lr`), for `LambdaLR`.

`step` is the number of optimizer steps already taken (0 for the first update).

- constant: 1, after a linear warm-up.
- cosine: linear warm-up, then min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * progress)) / 2, progress =
  (step - warmup) / (total_steps - warmup), clamped to [0, 1].
- sigmoid (the released training script's decay): factor(s) = (1 - low) / (1 + exp((s - W) / (0.1 W))) + low with
  low = 1 - sigmoid_ratio and W = sigmoid_center. With ratio 0.95 and W 45 the lr falls from about base toward
  0.05 * base (2e-6 -> 1e-7), passing the midpoint (1 - low) / 2 + low = 0.525 at step 45.

Linear warm-up (all schedules): factor *= (step + 1) / warmup_steps for step < warmup_steps, so the first update
uses base / warmup_steps and step warmup_steps - 1 the full base.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from mmsearch_r1.config import OptimConfig

if TYPE_CHECKING:
    import torch

SCHEDULES = ("constant", "cosine", "sigmoid")


def _warmup(step: int, warmup_steps: int) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    return 1.0


def lr_lambda(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Factor multiplying the base learning rate at optimizer step `step` (0-based)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    warm = _warmup(step, cfg.warmup_steps)
    if cfg.schedule == "constant":
        return warm
    if cfg.schedule == "cosine":
        if step < cfg.warmup_steps:
            return warm
        span = max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, max(0.0, (step - cfg.warmup_steps) / span))
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.schedule == "sigmoid":
        low = 1.0 - cfg.sigmoid_ratio
        center = float(cfg.sigmoid_center)
        if center <= 0:
            raise ValueError(f"optim.sigmoid_center must be > 0, got {cfg.sigmoid_center}")
        x = (step - center) / (0.1 * center)
        sig = 0.0 if x > 700 else 1.0 / (1.0 + math.exp(x))  # exp overflows past ~709
        return warm * ((1.0 - low) * sig + low)
    raise ValueError(f"optim.schedule {cfg.schedule!r} unknown; expected one of {SCHEDULES}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` over `lr_lambda`; call `scheduler.step()` after each `optimizer.step()`."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, cfg, total_steps))
