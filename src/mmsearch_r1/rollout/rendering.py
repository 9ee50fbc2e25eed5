"""The few things the rollout needs from the model layer's `ChatRenderer`, in one place.

`RendererAdapter(renderer)` exposes: `render_first_turn(message)` (the first user turn with the assistant
header), `render_tool_turn(parts)` (ids to append right after an assistant turn's `<|im_end|>`, up to and
including the next assistant header), `decode(ids)`, `encode(text)` (for scripted engines only: sampled tokens
are never re-encoded), `im_end` (looked up by text) and `token_ids()` (the ids `check_invariants` needs).
"""

from __future__ import annotations

from typing import Any

from mmsearch_r1.rollout.trajectory import TokenIds
from mmsearch_r1.types import Message, Part


class RendererAdapter:
    def __init__(self, renderer: Any) -> None:
        if isinstance(renderer, RendererAdapter):
            renderer = renderer.renderer
        self.renderer = renderer
        self.im_end = self._special("im_end", "<|im_end|>")

    def _special(self, attr: str, text: str) -> int:
        special = getattr(self.renderer, "special", None)
        value = getattr(special, attr, None) if special is not None else None
        if value is None:
            value = self.renderer.token_id(text)
        if not isinstance(value, int):
            raise ValueError(f"the renderer has no id for {text!r}")
        return value

    def render_first_turn(self, message: Message | list[Message]) -> Any:
        messages = message if isinstance(message, list) else [message]
        return self.renderer.render(messages, add_generation_prompt=True)

    def render_tool_turn(self, parts: list[Part], leading_newline: bool = True) -> Any:
        if leading_newline:
            return self.renderer.render_tool_turn(parts)
        return self.renderer.render_tool_turn(parts, leading_newline=False)

    def template_system_prompt(self) -> str | None:
        get = getattr(self.renderer, "template_system_prompt", None)
        return get() if get is not None else None

    def decode(self, ids: list[int]) -> str:
        return self.renderer.decode(ids)

    def encode(self, text: str) -> list[int]:
        return list(self.renderer.encode(text))

    @staticmethod
    def grids(rendered: Any) -> list[tuple[int, int, int]]:
        grid = rendered.image_grid_thw
        if grid is None:
            return []
        rows = grid.tolist() if hasattr(grid, "tolist") else grid
        return [(int(t), int(h), int(w)) for t, h, w in rows]

    def token_ids(self) -> TokenIds:
        return TokenIds(
            im_end=self.im_end,
            image_pad=self._special("image_pad", "<|image_pad|>"),
            vision_start=self._special("vision_start", "<|vision_start|>"),
            vision_end=self._special("vision_end", "<|vision_end|>"),
            merge_size=int(self.renderer.merge_size),
        )
