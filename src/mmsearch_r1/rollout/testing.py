"""Model-free stand-ins for testing code that consumes the rollout: a byte-level chat renderer and fake tools.

`ByteRenderer` speaks the same interface as the model layer's `ChatRenderer` (render, render_tool_turn, decode,
encode, special ids, merge_size) with one token per byte plus Qwen's special tokens, and expands each image into
`<|vision_start|>` + `t*h*w/4` pads + `<|vision_end|>` with the grid Qwen's processor would give a small image
(patch 14, merge 2). It carries no pixels. `FakeTool` returns given parts after a given delay. Together with
`engine.ScriptedEngine` they drive the agent loop without a model (see tests/test_rollout_scripted.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmsearch_r1.types import Message, Part, Sample, ToolResult, as_pil

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
)


@dataclass
class Rendered:
    input_ids: list[int]
    images: list[Any] = field(default_factory=list)
    pixel_values: Any = None
    image_grid_thw: list[tuple[int, int, int]] | None = None


@dataclass
class _Special:
    endoftext: int
    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    image_pad: int


class ByteRenderer:
    """Byte-level chat renderer. With `image_processor` (e.g. transformers' `Qwen2VLImageProcessorPil`) it also
    returns real `pixel_values` and the processor's grids, so a tiny Qwen2.5-VL with a 262-token vocabulary can
    run on its output."""

    merge_size = 2

    def __init__(self, image_processor: Any = None) -> None:
        self.image_processor = image_processor
        self.ids = {text: 256 + i for i, text in enumerate(SPECIAL_TOKENS)}
        self.texts = {v: k for k, v in self.ids.items()}
        self.special = _Special(*(self.ids[t] for t in SPECIAL_TOKENS))

    def token_id(self, text: str) -> int:
        return self.ids[text]

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        i = 0
        while i < len(text):
            for special, sid in self.ids.items():
                if text.startswith(special, i):
                    out.append(sid)
                    i += len(special)
                    break
            else:
                out += list(text[i].encode("utf-8"))
                i += 1
        return out

    def decode(self, ids: Sequence[int]) -> str:
        out, buf = [], bytearray()
        for t in ids:
            if t < 256:
                buf.append(t)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf = bytearray()
            out.append(self.texts[t])
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def grid(self, image: Any) -> tuple[int, int, int]:
        if self.image_processor is not None:
            return tuple(int(x) for x in self.encode_images([image])[1][0])  # type: ignore[return-value]
        w, h = as_pil(image).size
        return (1, 2 * max(1, math.ceil(h / 28)), 2 * max(1, math.ceil(w / 28)))

    def encode_images(self, images: Sequence[Any]) -> tuple[Any, Any]:
        """(pixel_values [N, D], image_grid_thw [k, 3]) from the image processor."""
        if self.image_processor is None:
            raise ValueError("ByteRenderer has no image processor")
        enc = self.image_processor(images=[as_pil(im) for im in images], return_tensors="pt")
        return enc["pixel_values"], enc["image_grid_thw"]

    def _parts(self, parts: Sequence[Part], rendered: Rendered) -> None:
        for p in parts:
            if isinstance(p, str):
                rendered.input_ids += self.encode(p)
                continue
            t, h, w = self.grid(p)
            rendered.input_ids += [self.special.vision_start]
            rendered.input_ids += [self.special.image_pad] * (t * h * w // self.merge_size**2)
            rendered.input_ids += [self.special.vision_end]
            rendered.images.append(as_pil(p))
            rendered.image_grid_thw = (rendered.image_grid_thw or []) + [(t, h, w)]
        if self.image_processor is not None and rendered.images:
            rendered.pixel_values, grid = self.encode_images(rendered.images)
            if [tuple(g) for g in grid.tolist()] != rendered.image_grid_thw:
                raise ValueError("image processor grids differ from the per-image grids")

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> Rendered:
        rendered = Rendered([])
        for m in messages:
            rendered.input_ids += self.encode(f"<|im_start|>{m.role}\n")
            self._parts(m.content, rendered)
            rendered.input_ids += self.encode("<|im_end|>\n")
        if add_generation_prompt:
            rendered.input_ids += self.encode("<|im_start|>assistant\n")
        return rendered

    def render_tool_turn(self, parts: Sequence[Part], leading_newline: bool = True) -> Rendered:
        rendered = Rendered(self.encode(("\n" if leading_newline else "") + "<|im_start|>user\n"))
        self._parts(parts, rendered)
        rendered.input_ids += self.encode("<|im_end|>\n<|im_start|>assistant\n")
        return rendered


class FakeTool:
    """A tool that returns `parts` (or `respond(arg, sample)`) after `delay_s`; `calls` records (arg, sample id)."""

    def __init__(
        self,
        parts: Sequence[Part] = (),
        *,
        ok: bool = True,
        error: str | None = None,
        delay_s: float | Callable[[str | None, Sample], float] = 0.0,
        respond: Callable[[str | None, Sample], ToolResult] | None = None,
    ) -> None:
        self.parts = list(parts)
        self.ok = ok
        self.error = error
        self.delay_s = delay_s
        self.respond = respond
        self.calls: list[tuple[str | None, str]] = []

    def __call__(self, arg: str | None, sample: Sample) -> ToolResult:
        self.calls.append((arg, sample.id))
        t = time.perf_counter()
        delay = self.delay_s(arg, sample) if callable(self.delay_s) else self.delay_s
        if delay > 0:
            time.sleep(delay)
        if self.respond is not None:
            return self.respond(arg, sample)
        return ToolResult(list(self.parts), ok=self.ok, error=self.error, latency_s=time.perf_counter() - t)


def build_byte_vlm(seed: int = 0, *, hidden: int = 64, init_range: float = 0.2) -> tuple[Any, ByteRenderer]:
    """A tiny random Qwen2.5-VL over `ByteRenderer`'s 263-id vocabulary, with transformers' Qwen2-VL image
    processor (56x56 to 112x112 pixels: 4 to 16 image tokens). For tests and benchmarks of code that runs a real
    model but needs no trained weights. A large `init_range` makes the logits depend strongly on positions and
    images. Imports torch/transformers lazily."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    renderer = ByteRenderer(Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112))
    sp = renderer.special
    head_dim = 16
    third = head_dim // 2 // 3
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=263,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=hidden // head_dim,
            num_key_value_heads=max(1, hidden // head_dim // 2),
            max_position_embeddings=8192,
            rope_scaling={"type": "mrope", "mrope_section": [head_dim // 2 - 2 * third, third, third]},
            bos_token_id=sp.endoftext,
            eos_token_id=sp.im_end,
            pad_token_id=sp.endoftext,
            initializer_range=init_range,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=hidden,
            fullatt_block_indexes=[1],
            window_size=112,
            initializer_range=init_range,
        ),
        image_token_id=sp.image_pad,
        video_token_id=262,  # not produced by ByteRenderer
        vision_start_token_id=sp.vision_start,
        vision_end_token_id=sp.vision_end,
        initializer_range=init_range,
    )
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(cfg).eval(), renderer
