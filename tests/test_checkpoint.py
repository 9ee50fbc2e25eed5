"""Checkpoints: 4 steps straight == 2 steps, interruption, `--resume`, 2 more steps (identical parameters, on CPU);
atomic layout, keep-last-K, the metrics file continues without duplicates; RNG round trip."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from tests.test_trainer import build_world, forced_hook, train_config

from mmsearch_r1.rl.checkpoint import capture_rng, checkpoint_dirs, restore_rng
from mmsearch_r1.rl.metrics import read_metrics


class Interrupted(Exception):
    pass


def _params(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "model.safetensors"))


def test_resume_gives_identical_parameters(tiny_model_dir, tmp_path):
    from mmsearch_r1.rl.trainer import train

    world = build_world(tmp_path / "world")
    extra = {
        "trainer.total_steps": 4,
        "trainer.save_every": 2,
        "trainer.keep_last": 1,
        "grpo.ppo_epochs": 2,
        "trainer.micro_batch_size": 4,
    }
    straight = train(train_config(tiny_model_dir, world, tmp_path / "a", **extra), engine_hook=forced_hook())

    def stop_after_two(step, total, metrics):
        if step == 2:
            raise Interrupted

    cfg_b = train_config(tiny_model_dir, world, tmp_path / "b", **extra)
    with pytest.raises(Interrupted):
        train(cfg_b, engine_hook=forced_hook(), progress=stop_after_two)
    assert [p.name for p in checkpoint_dirs(tmp_path / "b")] == ["step_000002"]
    resumed = train(cfg_b, resume=True, engine_hook=forced_hook())

    a, b = _params(straight.run_dir), _params(resumed.run_dir)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, differ
    # the run really moved, and the metric rows are the same steps once each
    start = torch.load(tmp_path / "b" / "checkpoints" / "step_000004" / "state.pt", weights_only=False)
    assert start["step"] == 4 and start["trainer"]["data_position"] == 8
    rows_a, rows_b = read_metrics(straight.metrics_path), read_metrics(resumed.metrics_path)
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra["reward/mean"] == rb["reward/mean"] and ra["actor/pg_loss"] == rb["actor/pg_loss"]
    assert [p.name for p in checkpoint_dirs(tmp_path / "b")] == ["step_000004"]  # keep_last=1
    assert not list((tmp_path / "b" / "checkpoints").glob(".*tmp"))


def test_resume_without_checkpoint_is_a_clear_error(tiny_model_dir, tmp_path):
    from mmsearch_r1.rl.trainer import train

    world = build_world(tmp_path / "world")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(train_config(tiny_model_dir, world, tmp_path / "c"), resume=True)


def test_rng_round_trip():
    state = capture_rng()
    a = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    restore_rng(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == a
