"""GRPO objective: hand-computed values (worked out in the comments) and micro-batch accumulation."""

from __future__ import annotations

import math

import pytest
import torch

from mmsearch_r1.rl.grpo import (
    agg_normalizer,
    aggregate,
    entropy_from_logits,
    filter_groups_dynamic,
    group_advantages,
    grpo_loss,
    kl_per_token,
    policy_loss,
)


# --- advantages ---------------------------------------------------------------------------------------------
def test_group_advantages_by_ids_with_lone_and_equal_groups() -> None:
    # group 0 = [1, 0, 0]: mean 1/3, centered [2/3, -1/3, -1/3], unbiased var = (4/9 + 1/9 + 1/9) / 2 = 1/3,
    #   std = 0.577350 -> adv = [1.154701, -0.577350, -0.577350]
    # group 1 = [0.9, 0.9, 0.9]: all equal -> 0;  group 2 = [0.81] alone -> 0
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.9, 0.9, 0.9, 0.81])
    ids = torch.tensor([7, 7, 7, 3, 3, 3, 5])
    adv = group_advantages(rewards, ids)
    expected = torch.tensor([1.154701, -0.577350, -0.577350, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)


def test_group_advantages_by_size_and_mean_mode() -> None:
    # groups of 2: [1, 0] -> centered [0.5, -0.5], unbiased std = sqrt(0.5) = 0.707107 -> [0.707106, -0.707106]
    #              [0.1, 0.1] -> [0, 0]
    rewards = torch.tensor([1.0, 0.0, 0.1, 0.1])
    torch.testing.assert_close(
        group_advantages(rewards, 2), torch.tensor([0.707106, -0.707106, 0.0, 0.0]), atol=1e-5, rtol=0
    )
    # grpo_mean on [1, 0, 0]: r - 1/3
    got = group_advantages(torch.tensor([1.0, 0.0, 0.0]), 3, mode="grpo_mean")
    torch.testing.assert_close(got, torch.tensor([2 / 3, -1 / 3, -1 / 3]))
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(rewards, 3)
    with pytest.raises(ValueError, match="advantage mode"):
        group_advantages(rewards, 2, mode="gae")


def test_filter_groups_dynamic() -> None:
    # groups of 2: [1, 1] equal -> drop; [0, 1] -> keep; [0, 0] equal -> drop
    keep = filter_groups_dynamic(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0]), 2)
    assert keep.tolist() == [False, False, True, True, False, False]
    keep = filter_groups_dynamic(torch.tensor([0.9, 0.0, 0.5]), torch.tensor([1, 1, 2]))  # lone group dropped
    assert keep.tolist() == [True, True, False]


# --- clipped policy loss --------------------------------------------------------------------------------------
def _ratios_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # seq 0 has A = +1, seq 1 has A = -1; ratios chosen inside and outside both clips (clip_low .2, clip_high .3)
    ratios = torch.tensor([[1.1, 1.5, 0.5], [0.5, 1.5, 0.9]], dtype=torch.float64)
    logp = torch.log(ratios).requires_grad_(True)
    return logp, torch.zeros_like(logp), torch.tensor([1.0, -1.0], dtype=torch.float64)


def test_policy_loss_clipping_both_signs() -> None:
    logp, old, adv = _ratios_batch()
    mask = torch.ones_like(logp)
    loss, stats = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.3)
    # per token -min(rho A, clip(rho, .8, 1.3) A):
    #  A=+1: rho 1.1 -> -1.1 (inside); rho 1.5 -> -1.3 (clipped high); rho 0.5 -> -0.5 (below, unclipped wins)
    #  A=-1: rho 0.5 -> +0.8 (clipped low); rho 1.5 -> +1.5 (above, unclipped wins); rho 0.9 -> +0.9 (inside)
    # token_mean = (-1.1 - 1.3 - 0.5 + 0.8 + 1.5 + 0.9) / 6 = 0.3 / 6 = 0.05
    assert loss.item() == pytest.approx(0.05, abs=1e-12)
    assert stats["clipfrac_high"].item() == pytest.approx(1 / 6)
    assert stats["clipfrac_low"].item() == pytest.approx(1 / 6)
    assert stats["ratio_mean"].item() == pytest.approx((1.1 + 1.5 + 0.5 + 0.5 + 1.5 + 0.9) / 6)
    loss.backward()
    # d/dlogp of -rho*A = -rho*A / 6 where unclipped, 0 where the clipped term is active
    expected = torch.tensor([[-1.1, 0.0, -0.5], [0.0, 1.5, 0.9]], dtype=torch.float64) / 6
    torch.testing.assert_close(logp.grad, expected)


def test_policy_loss_ignores_masked_tokens() -> None:
    logp, old, adv = _ratios_batch()
    mask = torch.tensor([[1, 1, 0], [0, 0, 1]])
    loss, _ = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.3)
    # kept tokens: -1.1, -1.3, +0.9 -> mean -1.5 / 3 = -0.5
    assert loss.item() == pytest.approx(-0.5, abs=1e-12)
    # approx_kl: k3 of KL(old || new) = rho - 1 - log rho over kept tokens, all 0 when rho == 1
    _, stats = policy_loss(old.clone(), old, adv, mask)
    assert stats["approx_kl"].item() == 0.0 and stats["ratio_mean"].item() == 1.0


# --- KL -----------------------------------------------------------------------------------------------------
def test_kl_k3_values_and_clamp() -> None:
    ln2 = math.log(2.0)
    logp = torch.tensor([0.0, ln2, -1.0, 0.0], dtype=torch.float64)
    ref = torch.tensor([ln2, 0.0, -1.0, 5.0], dtype=torch.float64)
    # d = ref - logp: ln2 -> 2 - ln2 - 1 = 0.306853; -ln2 -> 0.5 + ln2 - 1 = 0.193147; 0 -> 0;
    # 5 -> e^5 - 6 = 142.41 -> clamped to 10
    k3 = kl_per_token(logp, ref, "low_var_kl")
    torch.testing.assert_close(
        k3, torch.tensor([0.306853, 0.193147, 0.0, 10.0], dtype=torch.float64), atol=1e-6, rtol=0
    )
    k1 = kl_per_token(logp, ref, "k1")
    torch.testing.assert_close(k1, logp - ref)
    with pytest.raises(ValueError, match="kl kind"):
        kl_per_token(logp, ref, "k2x")


# --- aggregation --------------------------------------------------------------------------------------------
def test_aggregate_modes_with_ragged_masks() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    # token_mean: (1 + 2 + 3 + 4) / 4 = 2.5; seq_mean_token_mean: (mean(1,2,3) + 4) / 2 = 3 (empty row ignored)
    assert aggregate(values, mask, "token_mean").item() == pytest.approx(2.5)
    assert aggregate(values, mask, "seq_mean_token_mean").item() == pytest.approx(3.0)
    assert agg_normalizer(mask, "token_mean") == 4 and agg_normalizer(mask, "seq_mean_token_mean") == 2
    assert aggregate(values, mask, "token_mean", normalizer=8).item() == pytest.approx(10 / 8)
    with pytest.raises(ValueError, match="loss_agg"):
        aggregate(values, mask, "sum")


def test_entropy_from_logits() -> None:
    # p = [0.75, 0.25]: H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.562335; uniform over 4 -> ln 4
    logits = torch.tensor([[math.log(3.0), 0.0, -1e9, -1e9], [0.0, 0.0, 0.0, 0.0]])
    h = entropy_from_logits(logits)
    torch.testing.assert_close(h, torch.tensor([0.562335, math.log(4.0)]), atol=1e-6, rtol=0)
    big = torch.randn(3, 5, 11)
    torch.testing.assert_close(entropy_from_logits(big, chunk_rows=4), entropy_from_logits(big))


def test_grpo_loss_combines_terms_and_skips_kl() -> None:
    logp, old, adv = _ratios_batch()
    mask = torch.ones_like(logp)
    ref = logp.detach() + 0.1
    ent = torch.full_like(logp, 2.0)
    pg, _ = policy_loss(logp, old, adv, mask, 0.2, 0.3)
    kl = kl_per_token(logp, ref).mean()  # e^0.1 - 0.1 - 1 = 0.0051709 per token
    loss, stats = grpo_loss(
        logp,
        old,
        adv,
        mask,
        ref_logp=ref,
        entropy=ent,
        clip_low=0.2,
        clip_high=0.3,
        kl_coef=0.5,
        entropy_coef=0.01,
    )
    assert kl.item() == pytest.approx(math.exp(0.1) - 1.1, abs=1e-12)
    assert loss.item() == pytest.approx(pg.item() + 0.5 * kl.item() - 0.01 * 2.0, abs=1e-12)
    assert stats["entropy"].item() == pytest.approx(2.0)
    loss0, stats0 = grpo_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.3, kl_coef=0.0)
    assert loss0.item() == pytest.approx(pg.item()) and "kl" not in stats0
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old, adv, mask, kl_coef=0.1)


# --- micro-batch accumulation = one big batch -----------------------------------------------------------------
@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean"])
def test_micro_batch_accumulation_matches_full_batch(agg: str) -> None:
    g = torch.Generator().manual_seed(0)
    b, t, h, v = 6, 5, 4, 7
    x = torch.randn(b, t, h, generator=g, dtype=torch.float64)
    targets = torch.randint(0, v, (b, t), generator=g)
    lengths = torch.tensor([5, 1, 3, 0, 4, 2])  # ragged, one empty sequence
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    w0 = torch.randn(v, h, generator=g, dtype=torch.float64)
    old = torch.log_softmax(x @ (w0 + 0.05).T, -1).gather(-1, targets[..., None]).squeeze(-1)
    ref = torch.log_softmax(x @ (w0 - 0.05).T, -1).gather(-1, targets[..., None]).squeeze(-1)

    def loss_on(w: torch.Tensor, rows: slice, normalizer: float | None) -> torch.Tensor:
        logp = torch.log_softmax(x[rows] @ w.T, -1).gather(-1, targets[rows, :, None]).squeeze(-1)
        loss, _ = grpo_loss(
            logp,
            old[rows],
            adv[rows],
            mask[rows],
            ref_logp=ref[rows],
            kl_coef=0.1,
            agg=agg,
            normalizer=normalizer,
        )
        return loss

    w_full = w0.clone().requires_grad_(True)
    loss_on(w_full, slice(0, b), None).backward()

    splits = [slice(0, 2), slice(2, 3), slice(3, 6)]
    total = sum(agg_normalizer(mask[s], agg) for s in splits)
    w_acc = w0.clone().requires_grad_(True)
    for s in splits:
        loss_on(w_acc, s, total).backward()
    torch.testing.assert_close(w_acc.grad, w_full.grad, atol=1e-6, rtol=0)

    # without the global normalizer the per-micro-batch means give a different update
    w_bad = w0.clone().requires_grad_(True)
    for s in splits:
        (loss_on(w_bad, s, None) / len(splits)).backward()
    assert not torch.allclose(w_bad.grad, w_full.grad, atol=1e-6)
