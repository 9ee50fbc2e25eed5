"""LR schedules against hand-computed factors."""

from __future__ import annotations

import math

import pytest
import torch

from mmsearch_r1.config import OptimConfig
from mmsearch_r1.rl.schedules import build_scheduler, lr_lambda


def test_constant_with_warmup() -> None:
    cfg = OptimConfig(schedule="constant", warmup_steps=4)
    # (s + 1) / 4 for s < 4, then 1
    assert [lr_lambda(s, cfg, 100) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_lambda(0, OptimConfig(schedule="constant"), 10) == 1.0


def test_cosine_with_warmup_and_floor() -> None:
    cfg = OptimConfig(schedule="cosine", warmup_steps=2, min_lr_ratio=0.1)
    # warm-up: 0.5, 1.0; then total 10 -> span 8: progress 0 -> 1.0; progress 0.5 (step 6) -> 0.1 + 0.9 * 0.5
    # = 0.55; progress 0.25 (step 4) -> 0.1 + 0.9 * (1 + cos(pi/4)) / 2 = 0.868198; step >= 10 -> 0.1
    assert lr_lambda(0, cfg, 10) == 0.5
    assert lr_lambda(1, cfg, 10) == 1.0
    assert lr_lambda(2, cfg, 10) == pytest.approx(1.0)
    assert lr_lambda(4, cfg, 10) == pytest.approx(0.868198, abs=1e-6)
    assert lr_lambda(6, cfg, 10) == pytest.approx(0.55)
    assert lr_lambda(10, cfg, 10) == pytest.approx(0.1)
    assert lr_lambda(50, cfg, 10) == pytest.approx(0.1)


def test_sigmoid_decay_of_the_released_script() -> None:
    cfg = OptimConfig(schedule="sigmoid", sigmoid_ratio=0.95, sigmoid_center=45)
    low = 0.05
    # s = W: exp(0) = 1 -> (1 - low) / 2 + low = 0.525
    assert lr_lambda(45, cfg, 100) == pytest.approx(0.525)
    # s = 0: x = -45 / 4.5 = -10, e^-10 = 4.53999e-5 -> 0.95 / 1.0000454 + 0.05 = 0.949956872 + 0.05
    assert lr_lambda(0, cfg, 100) == pytest.approx(0.95 / (1 + math.exp(-10)) + low, abs=1e-12)
    assert lr_lambda(0, cfg, 100) == pytest.approx(0.999956872, abs=1e-9)
    # s = 54: x = 9 / 4.5 = 2, e^2 = 7.389056 -> 0.95 / 8.389056 + 0.05 = 0.113243 + 0.05 = 0.163243
    assert lr_lambda(54, cfg, 100) == pytest.approx(0.163243, abs=1e-6)
    # far right: tends to low (2e-6 * 0.05 = 1e-7), no overflow
    assert lr_lambda(100_000, cfg, 100) == pytest.approx(low)
    values = [lr_lambda(s, cfg, 100) for s in range(100)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_unknown_schedule_and_scheduler_drives_optimizer() -> None:
    with pytest.raises(ValueError, match="optim.schedule"):
        lr_lambda(0, OptimConfig(schedule="linear"), 10)
    cfg = OptimConfig(lr=2e-6, schedule="sigmoid", sigmoid_center=45, sigmoid_ratio=0.95)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, 100)
    for _ in range(45):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-6 * 0.525)
