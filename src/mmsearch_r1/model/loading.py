"""Load Qwen2-VL / Qwen2.5-VL checkpoints (weights, tokenizer, image processor) from a local directory.

Works for the tiny model this project builds and for released checkpoints a user has downloaded. The image
processor is loaded with its PIL backend, so torchvision is not needed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mmsearch_r1.model.chat import ChatRenderer

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("qwen2_5_vl", "qwen2_vl", "qwen2")  # qwen2: text-only (vLLM tests on CPU)
_DTYPES = ("float32", "bfloat16", "float16")


def _check_dir(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"model directory not found: {p}")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p} has no config.json (not a Hugging Face model directory)")
    return p


def load_processor(
    path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None
) -> ChatRenderer:
    """Tokenizer + image processor of a checkpoint directory, wrapped as a `ChatRenderer`.

    `min_pixels` / `max_pixels` (the config's `data.min_pixels` / `data.max_pixels`) replace the checkpoint's own
    pixel budget: every image is resized (aspect ratio kept, sides multiples of 28) so that its area lies within
    them, which bounds its image tokens at `max_pixels / 784`. None keeps the checkpoint's value.
    """
    from transformers import AutoImageProcessor, AutoTokenizer

    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"model directory not found: {p}")
    if not any((p / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise FileNotFoundError(f"{p} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(p))
    if not (p / "preprocessor_config.json").is_file():
        if _model_type(p) == "qwen2":  # a text-only model: prompts without images
            return ChatRenderer(tokenizer, None)
        raise FileNotFoundError(f"{p} has no preprocessor_config.json (image processor)")
    if min_pixels is not None and max_pixels is not None and not 0 < min_pixels <= max_pixels:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
    budget = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    image_processor = AutoImageProcessor.from_pretrained(str(p), backend="pil", **budget)
    return ChatRenderer(tokenizer, image_processor)


def _model_type(p: Path) -> str | None:
    import json

    try:
        return json.loads((p / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None


def model_class(model_type: str) -> Any:
    if model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration
    if model_type == "qwen2_vl":
        from transformers import Qwen2VLForConditionalGeneration

        return Qwen2VLForConditionalGeneration
    if model_type == "qwen2":
        from transformers import Qwen2ForCausalLM

        return Qwen2ForCausalLM
    raise ValueError(f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")


def load_model(
    path: str | Path,
    dtype: str = "float32",
    device: str = "cpu",
    attn_implementation: str | None = "sdpa",
) -> Any:
    """Load the model in `dtype` on `device`, in eval mode."""
    import torch
    from transformers import AutoConfig

    p = _check_dir(path)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} not one of {', '.join(_DTYPES)}")
    cfg = AutoConfig.from_pretrained(str(p))
    cls = model_class(cfg.model_type)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = cls.from_pretrained(str(p), **kwargs)
    return model.to(device).eval()
