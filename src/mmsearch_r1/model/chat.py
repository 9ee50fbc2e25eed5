"""Chat rendering in token space: messages with images anywhere -> token ids, pixel values and image grids.

Every message is rendered piece by piece, so that a conversation rendered whole is token-for-token the
concatenation of its turns as the agent loop builds them:

    <|im_start|>{role}\\n {content parts} <|im_end|>\\n          (one message)
    <|im_start|>assistant\\n                                   (generation prompt)

An image part becomes `<|vision_start|>` + N x `<|image_pad|>` + `<|vision_end|>` with
N = t*h*w / merge_size**2 from the image processor's grid. Text parts are tokenized with special tokens split,
so text (from a user or the web) can never produce a control token. `render_tool_turn(parts)` gives the ids that
follow an assistant turn's `<|im_end|>`: "\\n" + a user message + the generation prompt (without the "\\n" when
`leading_newline=False`, as the original's rollout wrote it). `template_system_prompt()` is the default system
prompt the tokenizer's chat template inserts into a conversation that has none (None when it inserts none).

`mm_token_type_ids` (1 on image pads, 0 elsewhere) travel with the ids: transformers' Qwen2.5-VL needs them to
compute the 3-row mRoPE positions itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mmsearch_r1.model.special_tokens import SpecialTokens
from mmsearch_r1.types import Message, Part, as_pil


@dataclass
class Rendered:
    """Token ids of a rendered span, with the images it contains (in order) and their processor outputs."""

    input_ids: list[int]
    images: list[Any] = field(default_factory=list)
    pixel_values: Any = None  # torch.Tensor [n_patches, D] or None
    image_grid_thw: Any = None  # torch.LongTensor [n_images, 3] or None


class ChatRenderer:
    """Render Qwen-VL style conversations to ids. Build with `load_processor(path)`."""

    def __init__(self, tokenizer: Any, image_processor: Any, special: SpecialTokens | None = None) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.special = special or SpecialTokens.from_tokenizer(tokenizer)
        self.merge_size = int(getattr(image_processor, "merge_size", 2))
        self._piece_cache: dict[str, list[int]] = {}

    # -- text ------------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Tokenize plain text; special-token strings inside it are split into ordinary tokens."""
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def _piece(self, text: str) -> list[int]:
        ids = self._piece_cache.get(text)
        if ids is None:
            ids = self._piece_cache[text] = self.encode(text)
        return list(ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_id(self, text: str) -> int:
        tid = self.tokenizer.get_vocab().get(text)
        if tid is None:
            raise ValueError(f"tokenizer has no token {text!r}")
        return int(tid)

    # -- images ----------------------------------------------------------------------------------------------
    def encode_images(self, images: Sequence[Part]) -> tuple[Any, Any]:
        """(pixel_values [n_patches, D], image_grid_thw [n_images, 3]) from the image processor."""
        if self.image_processor is None:
            raise ValueError("this is a text-only model (no image processor): it cannot take images")
        enc = self.image_processor(images=[as_pil(im) for im in images], return_tensors="pt")
        return enc["pixel_values"], enc["image_grid_thw"]

    def num_image_tokens(self, grid_thw: Sequence[int]) -> int:
        t, h, w = (int(x) for x in grid_thw)
        return t * h * w // (self.merge_size**2)

    def mm_token_type_ids(self, input_ids: Sequence[int]) -> list[int]:
        pad = self.special.image_pad
        return [1 if t == pad else 0 for t in input_ids]

    # -- messages --------------------------------------------------------------------------------------------
    def _header(self, role: str) -> list[int]:
        return [self.special.im_start, *self._piece(f"{role}\n")]

    def _footer(self) -> list[int]:
        return [self.special.im_end, *self._piece("\n")]

    def _content(self, parts: Sequence[Part], out: list[int], images: list[Any]) -> None:
        for p in parts:
            if isinstance(p, str):
                out += self.encode(p)
            else:
                images.append(as_pil(p))
                out.append(-len(images))  # placeholder, expanded once the grids are known

    def _finish(self, ids: list[int], images: list[Any]) -> Rendered:
        if not images:
            return Rendered(ids)
        pixel_values, grid = self.encode_images(images)
        out: list[int] = []
        for t in ids:
            if t < 0:
                n = self.num_image_tokens(grid[-t - 1].tolist())
                out += [self.special.vision_start, *([self.special.image_pad] * n), self.special.vision_end]
            else:
                out.append(t)
        return Rendered(out, images, pixel_values, grid)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> Rendered:
        """Render whole messages (any roles, images in any message) and optionally open an assistant turn."""
        ids: list[int] = []
        images: list[Any] = []
        for m in messages:
            ids += self._header(m.role)
            self._content(m.content, ids, images)
            ids += self._footer()
        if add_generation_prompt:
            ids += self._header("assistant")
        return self._finish(ids, images)

    def render_tool_turn(self, parts: Sequence[Part], leading_newline: bool = True) -> Rendered:
        """Ids to append right after an assistant turn's `<|im_end|>`: a user turn, then the next assistant header."""
        ids: list[int] = [*(self._piece("\n") if leading_newline else []), *self._header("user")]
        images: list[Any] = []
        self._content(parts, ids, images)
        ids += self._footer() + self._header("assistant")
        return self._finish(ids, images)

    def template_system_prompt(self) -> str | None:
        """The system text the chat template writes for a conversation without a system message, or None.
        Computed once per template (cached)."""
        template = getattr(self.tokenizer, "chat_template", None)
        if not template:
            return None
        cached = getattr(self, "_system_cache", None)
        if cached is not None and cached[0] == template:
            return cached[1]
        self._system_cache = (template, self._probe_system_prompt())
        return self._system_cache[1]

    def _probe_system_prompt(self) -> str | None:
        probe = "\x00probe\x00"
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": probe}], tokenize=False)
        head = "<|im_start|>system\n"
        start, end_probe = text.find(head), text.find(probe)
        if start < 0 or start > end_probe:
            return None
        end = text.find("<|im_end|>", start)
        return text[start + len(head) : end] if end > 0 else None

    def render_assistant_text(self, text: str) -> list[int]:
        """Ids of an assistant turn's text followed by `<|im_end|>` (what the policy emits for that turn)."""
        return [*self.encode(text), self.special.im_end]
