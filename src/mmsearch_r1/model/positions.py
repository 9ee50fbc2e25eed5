"""3-row mRoPE position ids for whole multi-turn sequences, by the model's own rope-index function.

Qwen2-VL / Qwen2.5-VL give image tokens (temporal, height, width) positions and text tokens equal positions in
all three rows, continuing after each image from the largest position used. The original system kept only one
row and numbered response tokens sequentially over returned images, so training log-probs disagreed with the
rollout's. Here the positions of the whole sequence (prompt, every assistant turn, every tool turn with its
thumbnails) come from `get_rope_index` of the loaded model, with padding excluded by the attention mask.

Layout (transformers 5.23): `forward` takes `position_ids` of shape (3, B, T) (temporal, height, width rows);
a 4-row tensor is also accepted, its first row then being plain text positions used only to build packed
attention masks. We return 3 rows. Note that the model computes mRoPE positions by itself only when it is given
`mm_token_type_ids` (1 on image pads; `ChatRenderer.mm_token_type_ids`); without them, and without
`position_ids`, it silently falls back to 1-D positions. Pass one or the other, to `forward` and `generate`.
"""

from __future__ import annotations

from typing import Any


def _rope_owner(model: Any) -> Any:
    for obj in (model, getattr(model, "model", None)):
        if obj is not None and hasattr(obj, "get_rope_index"):
            return obj
    raise TypeError(f"{type(model).__name__} has no get_rope_index (not a Qwen-VL model?)")


def _has_rope_index(model: Any) -> bool:
    return any(hasattr(o, "get_rope_index") for o in (model, getattr(model, "model", None)) if o is not None)


def image_token_id(model: Any) -> int:
    cfg = model.config
    tid = getattr(cfg, "image_token_id", None)
    if tid is None:
        tid = getattr(getattr(cfg, "text_config", None), "image_token_id", None)
    if tid is None:
        raise ValueError("model config has no image_token_id")
    return int(tid)


def compute_position_ids(
    model: Any, input_ids: Any, image_grid_thw: Any | None, attention_mask: Any | None = None
) -> Any:
    """Position ids of shape (3, B, T) for `input_ids` (B, T), images anywhere, padding (mask 0) ignored.

    `image_grid_thw` lists the grids of every image of the batch, row by row, in order of appearance.
    """
    import torch

    if not _has_rope_index(model):  # a text-only model (Qwen2): plain (B, T) positions
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    owner = _rope_owner(model)
    mm = (input_ids == image_token_id(model)).to(torch.int32)
    if image_grid_thw is None or mm.sum() == 0:
        # text only: plain 1-D positions, the same in all three rows, counting only attended tokens
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        pos = attention_mask.long().cumsum(-1) - 1
        pos = pos.masked_fill(attention_mask == 0, 0)
        return pos.unsqueeze(0).expand(3, -1, -1).contiguous()
    pos, _ = owner.get_rope_index(input_ids, mm, image_grid_thw=image_grid_thw, attention_mask=attention_mask)
    return pos
