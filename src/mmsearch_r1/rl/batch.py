"""Trajectories -> padded model inputs for the trainer's full-sequence forward, and that forward.

`collate(trajs, renderer, device, advantages=None)` builds a right-padded micro-batch:

- `input_ids` / `attention_mask` [B, T]: `prompt_ids + response_ids` of each trajectory, padded with the
  tokenizer's pad token (attention 0);
- `resp_index` [B, R]: for response token i of row b, the position whose hidden state predicts it
  (`len(prompt_ids) + i - 1`); padded entries point at 0 and are ignored;
- `targets` [B, R]: the response token where its loss mask is 1, else -1 (ignored); `mask` [B, R] float;
- `engine_logp` [B, R]: the log-probs the rollout engine recorded (0 on mask-0 tokens);
- `pixel_values`, `image_grid_thw`: every image of the micro-batch, re-processed here from the trajectories' PIL
  images (nothing from the rollout is kept in memory as tensors), checked against the grids the rollout used.

`PolicyForward(model)` wraps a Qwen-VL model as the unit the trainer (and FSDP2) calls: mRoPE position ids from
`compute_position_ids` over the whole sequence, `model.model(...)` for the final hidden states, the hidden states
of the response positions gathered, then `rl.logprobs.token_logprobs` (chunked, no full-vocabulary logits) with
the sampling temperature -> (logp [B, R], entropy [B, R] or None).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from mmsearch_r1.model import compute_position_ids
from mmsearch_r1.rl.logprobs import token_logprobs


def _pad_id(renderer: Any) -> int:
    special = getattr(renderer, "special", None)
    pad = getattr(special, "endoftext", None)
    return int(pad) if pad is not None else int(renderer.token_id("<|endoftext|>"))


def collate(
    trajs: Sequence[Any], renderer: Any, device: torch.device | str = "cpu", advantages: Any = None
) -> dict[str, Any]:
    """A right-padded micro-batch of trajectories (see the module docstring). `advantages` [B] is copied in."""
    if not trajs:
        raise ValueError("collate needs at least one trajectory")
    for k, t in enumerate(trajs):
        if not t.prompt_ids:
            raise ValueError(
                f"trajectory {k} ({t.sample_id}#{t.group_index}) has no prompt (finish {t.finish_reason})"
            )
        if not (len(t.response_ids) == len(t.loss_mask) == len(t.sampled_logprobs)):
            raise ValueError(
                f"trajectory {k} ({t.sample_id}#{t.group_index}): response/mask/logprob lengths differ"
            )
    b = len(trajs)
    width = max(len(t.prompt_ids) + len(t.response_ids) for t in trajs)
    rmax = max(1, max(len(t.response_ids) for t in trajs))
    ids = torch.full((b, width), _pad_id(renderer), dtype=torch.long)
    attn = torch.zeros((b, width), dtype=torch.long)
    resp_index = torch.zeros((b, rmax), dtype=torch.long)
    targets = torch.full((b, rmax), -1, dtype=torch.long)
    mask = torch.zeros((b, rmax), dtype=torch.float32)
    engine_logp = torch.zeros((b, rmax), dtype=torch.float32)
    for i, t in enumerate(trajs):
        p, r = len(t.prompt_ids), len(t.response_ids)
        ids[i, : p + r] = torch.tensor(t.prompt_ids + t.response_ids, dtype=torch.long)
        attn[i, : p + r] = 1
        if r:
            resp_index[i, :r] = torch.arange(p - 1, p + r - 1)
            m = torch.tensor(t.loss_mask, dtype=torch.long)
            targets[i, :r] = torch.where(m == 1, torch.tensor(t.response_ids), torch.full_like(m, -1))
            mask[i, :r] = m.float()
            engine_logp[i, :r] = torch.tensor(t.sampled_logprobs, dtype=torch.float32)
    images = [im for t in trajs for im in t.images]
    pixel_values = grid = None
    if images:
        pixel_values, grid = renderer.encode_images(images)
        grid = torch.as_tensor(grid).reshape(-1, 3)
        want = [tuple(g) for t in trajs for g in t.image_grid_thw]
        if [tuple(int(x) for x in g) for g in grid.tolist()] != want:
            raise RuntimeError("re-processed image grids differ from the grids the rollout rendered")
        pixel_values, grid = torch.as_tensor(pixel_values).to(device), grid.to(device)
    out = {
        "input_ids": ids.to(device),
        "attention_mask": attn.to(device),
        "resp_index": resp_index.to(device),
        "targets": targets.to(device),
        "mask": mask.to(device),
        "engine_logp": engine_logp.to(device),
        "pixel_values": pixel_values,
        "image_grid_thw": grid,
    }
    if advantages is not None:
        out["advantages"] = torch.as_tensor(advantages, dtype=torch.float32).reshape(b).to(device)
    return out


def index_stream(n: int, seed: int, shuffle: bool, start: int = 0) -> Iterator[int]:
    """Dataset indices from position `start` on: epoch e is a permutation of range(n) seeded by (seed, e)."""
    pos = start
    while True:
        epoch, k = divmod(pos, n)
        order = list(range(n))
        if shuffle:
            random.Random(seed * 1_000_003 + epoch).shuffle(order)
        yield from order[k:]
        pos = (epoch + 1) * n


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def micro_batches(trajs: list[Any], adv: list[float], size: int) -> list[tuple[list[Any], list[float]]]:
    """Consecutive chunks of `size` trajectories with their advantages."""
    return [(trajs[i : i + size], adv[i : i + size]) for i in range(0, len(trajs), size)]


class PolicyForward(torch.nn.Module):
    """`forward(batch) -> (logp [B, R], entropy [B, R] | None)` of the response tokens (module docstring)."""

    def __init__(self, model: Any, chunk_tokens: int = 1024, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.chunk_tokens = int(chunk_tokens)
        self.temperature = float(temperature)

    def forward(self, batch: dict[str, Any], with_entropy: bool = False) -> tuple[torch.Tensor, Any]:
        m = self.model
        ids, attn = batch["input_ids"], batch["attention_mask"]
        grid = batch["image_grid_thw"]
        pixels = batch["pixel_values"]
        if pixels is not None:
            pixels = pixels.to(next(m.visual.parameters()).dtype) if hasattr(m, "visual") else pixels
        pos = compute_position_ids(m, ids, grid, attn)
        images = {} if pixels is None else {"pixel_values": pixels, "image_grid_thw": grid}
        out = m.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False, **images)
        hidden = out.last_hidden_state
        idx = batch["resp_index"]
        h = hidden.gather(1, idx[..., None].expand(-1, -1, hidden.shape[-1]))
        return token_logprobs(
            h, m.lm_head.weight, batch["targets"], self.chunk_tokens, with_entropy, self.temperature
        )
