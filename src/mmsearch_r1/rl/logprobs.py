"""Log-probabilities of given target tokens from final hidden states, without full-vocabulary logits for the
whole batch.

`token_logprobs(hidden, lm_head_weight, targets)` computes log softmax(hidden @ W^T)[target] (and optionally the
entropy of that distribution) chunk by chunk over the B*T token positions. A custom autograd function keeps
only the inputs and one float per position (the log-normalizer) between forward and backward; backward
recomputes each chunk's logits and forms that chunk's gradient, so at any moment only `chunk_tokens x V`
logits exist, in forward and backward alike. With a 151,936-entry vocabulary a 4,096-token sequence would
otherwise hold 4096 x 151936 fp32 logits (2.5 GB) plus as much again for their gradient.

Gradients (z = logits of one position, p = softmax(z), H = entropy, t = target):
    d log p_t / dz = onehot(t) - p
    d H / dz       = -p * (log p + H)
Logits are formed in the input dtype and the softmax is taken in float32 (float64 for float64 inputs). Targets < 0 (ignore index) give
log-prob 0, entropy 0 and no gradient; their rows are left out before the vocabulary projection (in RL and SFT
most response positions are tool output, image or padding, so this skips most of the lm_head work).
`temperature` divides the logits (as the sampler did), so the result matches the log-probs the rollout engine
reports for the same tokens.

`logprobs_from_logits(logits, targets)` is the plain path for when logits already exist.
"""

from __future__ import annotations

import torch
from torch import Tensor


def logprobs_from_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[targets] in float32 (float64 for float64 logits); logits [..., V], targets [...]
    -> [...]; targets < 0 give 0."""
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    return logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (targets >= 0)


class _ChunkedLogProbs(torch.autograd.Function):
    """Forward and backward over chunks of rows; each chunk's [chunk, V] buffers are reused in place."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int, with_entropy: bool):  # type: ignore[override]
        n = hidden.shape[0]
        acc = torch.promote_types(hidden.dtype, torch.float32)  # float32, or float64 for float64 inputs
        valid = targets >= 0
        safe_t = targets.clamp(min=0)
        logp = hidden.new_empty(n, dtype=acc)
        lse = hidden.new_empty(n, dtype=acc)
        ent = hidden.new_empty(n, dtype=acc) if with_entropy else None
        for s in range(0, n, chunk):
            z = (hidden[s : s + chunk] @ weight.T).to(acc)
            lse_c = torch.logsumexp(z, dim=-1)
            lse[s : s + chunk] = lse_c
            logp[s : s + chunk] = z.gather(-1, safe_t[s : s + chunk, None]).squeeze(-1) - lse_c
            if ent is not None:
                log_p = z.sub_(lse_c[:, None])  # in place: z now holds log p
                ent[s : s + chunk] = -log_p.exp().mul_(log_p).sum(-1)
            del z
        logp = logp * valid
        if ent is not None:
            ent = ent * valid
        ctx.save_for_backward(hidden, weight, targets, lse, ent if ent is not None else lse.new_empty(0))
        ctx.chunk = chunk
        ctx.with_entropy = with_entropy
        if ent is None:
            return logp, lse.new_empty(0)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp: Tensor, grad_ent: Tensor):  # type: ignore[override]
        hidden, weight, targets, lse, ent = ctx.saved_tensors
        chunk = ctx.chunk
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        acc = lse.dtype
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        valid = (targets >= 0).to(acc)
        safe_t = targets.clamp(min=0)
        g_lp = grad_logp.to(acc) * valid if grad_logp is not None else torch.zeros_like(lse)
        use_ent = ctx.with_entropy and grad_ent is not None and grad_ent.numel() > 0
        g_en = grad_ent.to(acc) * valid if use_ent else None
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s : s + chunk]
            gl = g_lp[s : s + chunk, None]
            # dL/dz = g_lp * (onehot(t) - p) - g_en * p * (log p + H), built in place in the logits' buffer
            log_p = (h @ weight.T).to(acc).sub_(lse[s : s + chunk, None])
            if g_en is None:
                gz = log_p.exp_().mul_(-gl)
            else:
                p = log_p.exp()
                factor = log_p.add_(ent[s : s + chunk, None]).mul_(g_en[s : s + chunk, None]).add_(gl)
                gz = p.mul_(factor.neg_())
                del factor
            del log_p
            gz.scatter_add_(-1, safe_t[s : s + chunk, None], gl)
            if grad_h is not None:
                grad_h[s : s + chunk] = gz.to(hidden.dtype) @ weight
            if grad_w is not None:
                grad_w.addmm_(gz.T, h.to(acc))
            del gz
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None


def token_logprobs(
    hidden: Tensor,
    lm_head_weight: Tensor,
    targets: Tensor,
    chunk_tokens: int = 1024,
    with_entropy: bool = False,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of each target token (and optionally the entropy) from hidden states, in chunks of positions.

    hidden [B, T, H] (the position that predicts targets[b, t]), lm_head_weight [V, H], targets [B, T] long
    (negative = ignore). Returns (logp [B, T], entropy [B, T] or None) in float32 (float64 for float64 inputs). Differentiable with
    respect to hidden and lm_head_weight; backward recomputes logits chunk by chunk.
    """
    if hidden.dim() != 3 or targets.shape != hidden.shape[:2]:
        raise ValueError(
            f"hidden must be [B, T, H] and targets [B, T]; got {tuple(hidden.shape)} and {tuple(targets.shape)}"
        )
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"lm_head_weight must be [V, {hidden.shape[2]}], got {tuple(lm_head_weight.shape)}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
    b, t, h = hidden.shape
    flat, tgt = hidden.reshape(b * t, h), targets.reshape(-1)
    keep = (tgt >= 0).nonzero().squeeze(1)  # only these rows are projected onto the vocabulary
    skip = keep.numel() < b * t
    if skip:
        flat, tgt = flat.index_select(0, keep), tgt.index_select(0, keep)
    if temperature != 1.0:
        flat = flat / temperature
    logp, ent = _ChunkedLogProbs.apply(flat, lm_head_weight, tgt, int(chunk_tokens), with_entropy)
    if skip:  # ignored positions: log-prob 0, entropy 0, no gradient
        logp = logp.new_zeros(b * t).index_copy(0, keep, logp)
        ent = ent.new_zeros(b * t).index_copy(0, keep, ent) if with_entropy else ent
    return logp.reshape(b, t), (ent.reshape(b, t) if with_entropy else None)
