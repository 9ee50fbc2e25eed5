"""The GRPO objective as pure tensor functions (no model, no optimizer, no state).

Notation: a mini-batch holds sequences i (trajectories), each with response tokens t; `mask[i, t] = 1` marks a
token the policy sampled (assistant tokens), 0 marks prompt, tool and padding tokens. `logp` are the current
policy's log-probs of the sampled tokens, `old_logp` those of the policy that sampled them (computed by the
trainer before the update), `ref_logp` those of the frozen reference model.

Objective (minimized)::

    A_i      = (r_i - mean_g(r)) / (std_g(r) + eps)            group-relative advantage, g = i's prompt group
    rho_it   = exp(logp_it - old_logp_it)
    L_pol_it = -min(rho_it * A_i, clip(rho_it, 1 - clip_low, 1 + clip_high) * A_i)
    KL_it    = exp(ref_it - logp_it) - (ref_it - logp_it) - 1   ("low_var_kl", the k3 estimator, clamped to
               [-10, 10]) or logp_it - ref_it ("k1")
    H_it     = entropy of the policy's next-token distribution at t
    loss     = AGG(L_pol) + kl_coef * AGG(KL) - entropy_coef * AGG(H)

AGG is `aggregate`: "token_mean" sums over every mask-1 token of the mini-batch and divides by their count (what
the released code did); "seq_mean_token_mean" averages tokens within each sequence, then averages sequences (what
the paper's formula writes). With gradient accumulation over micro-batches pass `normalizer` = the count over
the whole mini-batch (from `agg_normalizer`, summed over micro-batches and ranks): the summed micro-batch losses
then equal the full mini-batch loss exactly, so the update does not depend on how the batch was split. Under
data parallelism the normalizer is the count over all ranks; since DDP/FSDP average gradients over the W ranks,
multiply each rank's loss by W (or reduce gradients with a sum) to keep the same update.

Choices and deviations:
- std is the unbiased (n - 1) standard deviation, as `torch.std` in the released code. A group of one has no
  std: its advantage is 0 (the released code used mean 0, std 1 there, i.e. the raw reward; a lone sample
  carries no group-relative signal, so we give it none). A group whose rewards are all equal gets 0.
- Separate low/high clip values (equal by default, 0.2 as in the paper).
- The KL term is skipped entirely when kl_coef == 0 (the trainer then never builds a reference model).
- `filter_groups_dynamic` implements dynamic sampling's filter: drop groups whose rewards are all equal.
"""

from __future__ import annotations

import torch
from torch import Tensor

AGG_MODES = ("token_mean", "seq_mean_token_mean")
ADV_MODES = ("grpo", "grpo_mean")
KL_KINDS = ("low_var_kl", "k1")


# ----------------------------------------------------------------------------------------------------------
# Advantages
# ----------------------------------------------------------------------------------------------------------
def _group_index(groups: Tensor | int, n: int) -> tuple[Tensor, int]:
    """Map `groups` (a group size for consecutive groups, or one id per sample) to dense ids 0..G-1."""
    if isinstance(groups, int):
        if groups < 1 or n % groups != 0:
            raise ValueError(f"group_size={groups} must be >= 1 and divide the number of rewards ({n})")
        return torch.arange(n) // groups, n // groups
    ids = torch.as_tensor(groups)
    if ids.shape != (n,):
        raise ValueError(f"group ids must have shape ({n},), got {tuple(ids.shape)}")
    _, inverse = torch.unique(ids, return_inverse=True)
    return inverse, int(inverse.max().item()) + 1 if n else 0


@torch.no_grad()
def group_advantages(rewards: Tensor, groups: Tensor | int, mode: str = "grpo", eps: float = 1e-6) -> Tensor:
    """Per-sequence advantages: (r - group mean) / (group unbiased std + eps) ("grpo") or r - mean ("grpo_mean").

    `groups` is either the group size (rewards of one prompt are consecutive) or a tensor of group ids.
    Groups of one and groups with all-equal rewards get advantage 0. Returns float32 [N], no grad.
    """
    if mode not in ADV_MODES:
        raise ValueError(f"advantage mode {mode!r} unknown; expected one of {ADV_MODES}")
    r = rewards.detach().to(torch.float64).reshape(-1)  # float64: 0.9 * 3 / 3 must give back exactly 0.9
    idx, g = _group_index(groups, r.numel())
    idx = idx.to(r.device)
    zeros = torch.zeros(g, dtype=r.dtype, device=r.device)
    count = zeros.index_add(0, idx, torch.ones_like(r))
    mean = zeros.index_add(0, idx, r) / count
    centered = r - mean[idx]
    adv = centered
    if mode == "grpo":
        std = torch.sqrt(zeros.index_add(0, idx, centered**2) / (count - 1).clamp(min=1))
        adv = centered / (std[idx] + eps)
    # groups of one, and all-equal groups (exactly 0 even where rounding leaves a tiny std), get 0
    informative = filter_groups_dynamic(r, groups)
    return torch.where(informative, adv, torch.zeros_like(adv)).to(torch.float32)


@torch.no_grad()
def filter_groups_dynamic(rewards: Tensor, groups: Tensor | int) -> Tensor:
    """Dynamic sampling filter: bool keep mask [N], False for every sample of a group whose rewards are all equal
    (such groups have zero advantage and contribute no policy gradient). A group of one is dropped too."""
    r = rewards.detach().to(torch.float64).reshape(-1)
    idx, g = _group_index(groups, r.numel())
    idx = idx.to(r.device)
    lo = torch.full((g,), float("inf"), dtype=r.dtype, device=r.device).scatter_reduce(0, idx, r, "amin")
    hi = torch.full((g,), float("-inf"), dtype=r.dtype, device=r.device).scatter_reduce(0, idx, r, "amax")
    return (hi > lo)[idx]


# ----------------------------------------------------------------------------------------------------------
# Aggregation over tokens
# ----------------------------------------------------------------------------------------------------------
def agg_normalizer(mask: Tensor, mode: str) -> float:
    """The count `aggregate` divides by for this (micro-)batch: mask-1 tokens ("token_mean") or sequences with
    at least one mask-1 token ("seq_mean_token_mean"). Sum it over micro-batches (and ranks) for `normalizer`."""
    if mode == "token_mean":
        return float(mask.sum().item())
    if mode == "seq_mean_token_mean":
        return float((mask.sum(-1) > 0).sum().item())
    raise ValueError(f"loss_agg {mode!r} unknown; expected one of {AGG_MODES}")


def aggregate(
    values: Tensor, mask: Tensor, mode: str = "token_mean", normalizer: float | None = None
) -> Tensor:
    """Reduce per-token `values` [B, T] over mask-1 tokens to a scalar.

    token_mean: sum(values * mask) / normalizer (default: this batch's mask-1 token count).
    seq_mean_token_mean: sum_i [sum_t values_it mask_it / sum_t mask_it] / normalizer (default: the number of
    sequences with at least one mask-1 token; empty sequences contribute nothing).
    """
    m = mask.to(values.dtype)
    if mode == "token_mean":
        total = (values * m).sum()
    elif mode == "seq_mean_token_mean":
        per_seq = (values * m).sum(-1) / m.sum(-1).clamp(min=1)
        total = per_seq.sum()
    else:
        raise ValueError(f"loss_agg {mode!r} unknown; expected one of {AGG_MODES}")
    if normalizer is None:
        normalizer = agg_normalizer(mask, mode)
    return total / max(float(normalizer), 1.0)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(values.dtype)
    return ((values * m).sum() / m.sum().clamp(min=1)).detach()


# ----------------------------------------------------------------------------------------------------------
# Policy loss (PPO clipped surrogate with separate clip bounds)
# ----------------------------------------------------------------------------------------------------------
def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    agg: str = "token_mean",
    normalizer: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate loss -min(rho A, clip(rho, 1-clip_low, 1+clip_high) A) aggregated over mask-1 tokens.

    `advantages` is per sequence [B] (broadcast over tokens) or per token [B, T]. Stats (detached scalars,
    means over mask-1 tokens of this batch): clipfrac_low (rho < 1-clip_low with A < 0: clipped, no gradient),
    clipfrac_high (rho > 1+clip_high with A > 0), approx_kl (k3 estimate of KL(old || new)), ratio_mean.
    """
    adv = advantages.to(logp.dtype)
    if adv.dim() == 1:
        adv = adv[:, None]
    log_ratio = logp - old_logp.detach()
    ratio = torch.exp(log_ratio)
    surr = ratio * adv
    surr_clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    per_token = -torch.minimum(surr, surr_clipped)
    loss = aggregate(per_token, mask, agg, normalizer)
    with torch.no_grad():
        stats = {
            "clipfrac_low": _masked_mean(((ratio < 1.0 - clip_low) & (adv < 0)).to(logp.dtype), mask),
            "clipfrac_high": _masked_mean(((ratio > 1.0 + clip_high) & (adv > 0)).to(logp.dtype), mask),
            "approx_kl": _masked_mean(ratio - 1.0 - log_ratio, mask),
            "ratio_mean": _masked_mean(ratio, mask),
        }
    return loss, stats


# ----------------------------------------------------------------------------------------------------------
# KL to the reference and the entropy bonus
# ----------------------------------------------------------------------------------------------------------
def kl_per_token(logp: Tensor, ref_logp: Tensor, kind: str = "low_var_kl") -> Tensor:
    """Per-token KL(policy || reference) estimate from sampled tokens.

    low_var_kl (k3): exp(ref - logp) - (ref - logp) - 1, clamped to [-10, 10] (as the released code did);
    unbiased, always >= 0. k1: logp - ref.
    """
    ref = ref_logp.detach()
    if kind == "low_var_kl":
        d = ref - logp
        return torch.clamp(torch.exp(d) - d - 1.0, min=-10.0, max=10.0)
    if kind == "k1":
        return logp - ref
    raise ValueError(f"kl kind {kind!r} unknown; expected one of {KL_KINDS}")


def kl_penalty(
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    kind: str = "low_var_kl",
    agg: str = "token_mean",
    normalizer: float | None = None,
) -> Tensor:
    """`kl_per_token` aggregated over mask-1 tokens with the same mode as the policy loss."""
    return aggregate(kl_per_token(logp, ref_logp, kind), mask, agg, normalizer)


def entropy_from_logits(logits: Tensor, chunk_rows: int | None = None) -> Tensor:
    """Entropy of softmax(logits) over the last dim: logsumexp(z) - sum softmax(z) * z, in float32 (or float64).

    With `chunk_rows`, rows (all leading dims flattened) are processed in chunks so that only one chunk's
    probabilities exist at a time. Returns logits.shape[:-1].
    """
    flat = logits.reshape(-1, logits.shape[-1])
    step = flat.shape[0] if not chunk_rows else max(1, int(chunk_rows))
    parts = []
    for s in range(0, flat.shape[0], step):
        z = flat[s : s + step].to(torch.promote_types(flat.dtype, torch.float32))
        lse = torch.logsumexp(z, dim=-1)
        parts.append(lse - (torch.softmax(z, dim=-1) * z).sum(-1))
    out = (
        torch.cat(parts) if parts else flat.new_zeros(0, dtype=torch.promote_types(flat.dtype, torch.float32))
    )
    return out.reshape(logits.shape[:-1])


def entropy_bonus(
    entropy: Tensor, mask: Tensor, agg: str = "token_mean", normalizer: float | None = None
) -> Tensor:
    """Aggregated entropy over mask-1 tokens; the loss subtracts entropy_coef times this."""
    return aggregate(entropy, mask, agg, normalizer)


# ----------------------------------------------------------------------------------------------------------
# The full objective
# ----------------------------------------------------------------------------------------------------------
def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logp: Tensor | None = None,
    entropy: Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl_coef: float = 0.001,
    kl_kind: str = "low_var_kl",
    entropy_coef: float = 0.0,
    agg: str = "token_mean",
    normalizer: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """loss = policy_loss + kl_coef * kl_penalty - entropy_coef * entropy_bonus, all aggregated alike.

    The KL term is skipped when kl_coef == 0 (ref_logp may then be None); the entropy term when
    entropy_coef == 0 (entropy may then be None). Stats: the policy stats plus pg_loss, kl, entropy (detached).
    """
    pg, stats = policy_loss(logp, old_logp, advantages, mask, clip_low, clip_high, agg, normalizer)
    loss = pg
    stats["pg_loss"] = pg.detach()
    if kl_coef != 0.0:
        if ref_logp is None:
            raise ValueError("kl_coef != 0 needs ref_logp (the reference model's log-probs)")
        kl = kl_penalty(logp, ref_logp, mask, kl_kind, agg, normalizer)
        loss = loss + kl_coef * kl
        stats["kl"] = kl.detach()
    if entropy is not None:
        ent = entropy_bonus(entropy, mask, agg, normalizer)
        stats["entropy"] = ent.detach()
        if entropy_coef != 0.0:
            loss = loss - entropy_coef * ent
    elif entropy_coef != 0.0:
        raise ValueError("entropy_coef != 0 needs the per-token entropy")
    return loss, stats
