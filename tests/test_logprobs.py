"""Chunked log-probs equal the naive full-logits computation in value and gradient."""

from __future__ import annotations

import pytest
import torch

from mmsearch_r1.rl.grpo import entropy_from_logits
from mmsearch_r1.rl.logprobs import logprobs_from_logits, token_logprobs


def _naive(hidden, weight, targets, temperature=1.0):
    logits = hidden @ weight.T / temperature
    logp = logprobs_from_logits(logits, targets)
    ent = entropy_from_logits(logits) * (targets >= 0)
    return logp, ent


def _inputs(dtype, seed=0, b=2, t=7, h=5, v=13):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=g, dtype=dtype)
    weight = torch.randn(v, h, generator=g, dtype=dtype)
    targets = torch.randint(0, v, (b, t), generator=g)
    targets[-1, t - 2 :] = -100  # ignored positions
    return hidden, weight, targets


@pytest.mark.parametrize("chunk", [1, 3, 14, 100])
def test_values_and_gradients_match_naive_fp64(chunk: int) -> None:
    hidden, weight, targets = _inputs(torch.float64)
    g = torch.Generator().manual_seed(1)
    w_lp = torch.randn(targets.shape, generator=g, dtype=torch.float64)
    w_en = torch.randn(targets.shape, generator=g, dtype=torch.float64)

    h1, W1 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    lp1, en1 = _naive(h1, W1, targets, temperature=0.7)
    ((lp1 * w_lp).sum() + (en1 * w_en).sum()).backward()

    h2, W2 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    lp2, en2 = token_logprobs(h2, W2, targets, chunk_tokens=chunk, with_entropy=True, temperature=0.7)
    ((lp2 * w_lp).sum() + (en2 * w_en).sum()).backward()

    torch.testing.assert_close(lp2.double(), lp1.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(en2.double(), en1.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(h2.grad, h1.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(W2.grad, W1.grad, atol=1e-6, rtol=0)
    assert torch.all(lp2[1, 5:] == 0) and torch.all(h2.grad[1, 5:] == 0)


def test_fp32_without_entropy_and_gradcheck() -> None:
    hidden, weight, targets = _inputs(torch.float32, seed=3, t=9, v=31)
    h1, W1 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    lp1 = logprobs_from_logits(h1 @ W1.T, targets)
    lp1.sum().backward()
    h2, W2 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    lp2, ent = token_logprobs(h2, W2, targets, chunk_tokens=4)
    lp2.sum().backward()
    assert ent is None
    torch.testing.assert_close(lp2, lp1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h2.grad, h1.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(W2.grad, W1.grad, atol=1e-5, rtol=1e-5)

    # numerical gradient check of the custom backward (fp64, entropy included)
    hd, wd, td = _inputs(torch.float64, seed=4, b=1, t=4, h=3, v=6)
    hd.requires_grad_(True)
    wd.requires_grad_(True)

    def f(h, w):
        lp, en = token_logprobs(h, w, td, chunk_tokens=3, with_entropy=True)
        return lp, en

    assert torch.autograd.gradcheck(f, (hd, wd))


def test_bad_shapes_are_named() -> None:
    hidden, weight, targets = _inputs(torch.float32)
    with pytest.raises(ValueError, match="targets"):
        token_logprobs(hidden, weight, targets[:, :3])
    with pytest.raises(ValueError, match="lm_head_weight"):
        token_logprobs(hidden, weight[:, :2], targets)


def test_all_ignored_rows_give_zeros_and_zero_gradients() -> None:
    hidden, weight, targets = _inputs(torch.float32)
    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    lp, en = token_logprobs(h, w, torch.full_like(targets, -1), chunk_tokens=4, with_entropy=True)
    (lp.sum() + en.sum()).backward()
    assert lp.shape == targets.shape and torch.all(lp == 0) and torch.all(en == 0)
    assert torch.all(h.grad == 0) and torch.all(w.grad == 0)
