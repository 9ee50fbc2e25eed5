"""Special tokens of Qwen-VL chat models, looked up by their text at load time (never by number).

A tokenizer that lacks one of them cannot render our conversations; `SpecialTokens.from_tokenizer` says which
one is missing instead of failing later with a shape error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TOKEN_TEXTS = {
    "endoftext": "<|endoftext|>",
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "vision_start": "<|vision_start|>",
    "vision_end": "<|vision_end|>",
    "image_pad": "<|image_pad|>",
    "video_pad": "<|video_pad|>",
}


@dataclass(frozen=True)
class SpecialTokens:
    endoftext: int
    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    image_pad: int
    video_pad: int

    @property
    def pad(self) -> int:
        return self.endoftext

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> SpecialTokens:
        """Look every special token up by text; a missing one raises ValueError naming it."""
        vocab = tokenizer.get_vocab()
        ids: dict[str, int] = {}
        missing = []
        for field_name, text in TOKEN_TEXTS.items():
            tid = vocab.get(text)
            if tid is None:
                missing.append(text)
            else:
                ids[field_name] = int(tid)
        if missing:
            raise ValueError(
                f"tokenizer lacks the special token(s) {', '.join(missing)} that Qwen-VL chat rendering needs"
            )
        return cls(**ids)
