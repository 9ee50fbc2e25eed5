"""The separate old-log-prob pass is skipped exactly when it cannot change the result.

With one PPO epoch and one mini-batch per step the update's forward runs on the weights that sampled, so its
detached log-probs are the old ones. These tests train one step of the tiny model with and without the pass
(the decision patched) and check that the weights come out identical, that the pass is really gone (policy
forwards counted), that the reference pass still runs when `grpo.kl_coef > 0`, and that
`rollout/logprob_diff_max` is still measured from the update's own forward.
"""

from __future__ import annotations

import pytest
import torch
from tests.test_trainer import build_world, forced_hook, train_config

from mmsearch_r1.rl.metrics import read_metrics


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


def _one_step(monkeypatch, model_dir, world, run_dir, separate: bool | None, **extra):
    """Train one step; returns (final state dict, metrics row, forwards by kind)."""
    from mmsearch_r1.model import load_model
    from mmsearch_r1.rl import trainer as T
    from mmsearch_r1.rl.batch import PolicyForward

    counts = {"policy_no_grad": 0, "policy_grad": 0, "ref": 0}
    real_forward = PolicyForward.forward

    def counting(self, batch, with_entropy=False):
        if not any(p.requires_grad for p in self.model.parameters()):
            counts["ref"] += 1
        elif torch.is_grad_enabled():
            counts["policy_grad"] += 1
        else:
            counts["policy_no_grad"] += 1
        return real_forward(self, batch, with_entropy)

    with monkeypatch.context() as mp:
        mp.setattr(PolicyForward, "forward", counting)
        if separate is not None:
            mp.setattr(T, "old_logprob_pass_needed", lambda cfg: separate)
        cfg = train_config(
            model_dir,
            world,
            run_dir,
            **{"trainer.total_steps": 1, "trainer.save_every": 0, "trainer.micro_batch_size": 1, **extra},
        )
        result = T.train(cfg, engine_hook=forced_hook())
    row = read_metrics(result.metrics_path)[-1]
    return load_model(result.final_dir).state_dict(), row, counts


@pytest.mark.parametrize("kl", [0.0, 0.01])
def test_skipping_the_old_pass_gives_the_same_update(monkeypatch, tiny_model_dir, world, tmp_path, kl):
    from mmsearch_r1.model import load_model

    before = load_model(tiny_model_dir).state_dict()
    # 2 prompts x 2 rollouts, micro-batches of 1: 4 micro-batches, one epoch, one mini-batch
    skip_w, skip_row, skip_n = _one_step(
        monkeypatch, tiny_model_dir, world, tmp_path / "skip", None, **{"grpo.kl_coef": kl}
    )
    full_w, full_row, full_n = _one_step(
        monkeypatch, tiny_model_dir, world, tmp_path / "full", True, **{"grpo.kl_coef": kl}
    )
    micro = 4
    assert skip_n == {"policy_no_grad": 0, "policy_grad": micro, "ref": micro if kl else 0}
    assert full_n == {"policy_no_grad": micro, "policy_grad": micro, "ref": micro if kl else 0}
    assert any(not torch.equal(before[k], v) for k, v in skip_w.items())  # the step did move the weights
    unequal = [k for k, v in skip_w.items() if not torch.equal(v, full_w[k])]
    assert not unequal, unequal
    for row in (skip_row, full_row):  # measured either way, from whichever forward gave the old log-probs
        assert 0.0 < row["rollout/logprob_diff_max"] < 1e-4
    assert skip_row["actor/pg_loss"] == full_row["actor/pg_loss"]
    assert skip_row["actor/clip_frac_low"] == skip_row["actor/clip_frac_high"] == 0.0  # ratio exactly 1


def test_the_pass_is_kept_when_the_weights_move_before_the_last_update():
    from mmsearch_r1.config_io import load_config
    from mmsearch_r1.rl.trainer import old_logprob_pass_needed

    def cfg(*over):
        return load_config(None, ["trainer.prompts_per_step=4", "trainer.mini_batch_prompts=4", *over])

    assert not old_logprob_pass_needed(cfg())
    assert old_logprob_pass_needed(cfg("grpo.ppo_epochs=2"))
    assert old_logprob_pass_needed(cfg("trainer.mini_batch_prompts=2"))
