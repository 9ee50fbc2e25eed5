"""Build a tiny model of the Qwen2.5-VL architecture offline and deterministically.

What it writes (Hugging Face format, loadable with `from_pretrained`, `load_model` and `load_processor`):
- a byte-level BPE tokenizer trained here with `tokenizers` on a built-in corpus (English plus the protocol's
  tags) and an optional user corpus, with Qwen's special-token strings and a Qwen-style chat template;
- the Qwen2-VL image processor configuration (patch 14, merge 2; small pixel bounds so that a 56x56 image is 4
  merged image tokens);
- randomly initialized weights from `seed`.

Same seed and corpus give byte-identical files (tested). Defaults: text hidden 128, 2 layers, 4 heads of 32
(head_dim >= 32 keeps vLLM's CPU attention happy), vision depth 2, vision hidden 64.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmsearch_r1.model.special_tokens import TOKEN_TEXTS

log = logging.getLogger(__name__)

_BUILTIN_CORPUS = """\
<reason>The image shows a building. I recognize it, so I can answer directly.</reason><answer>Paris</answer>
<reason>I do not recognize this object. I will search with the image.</reason><search><img></search>
<reason>The results name the object. I need one more fact, so I will search the web.</reason><text_search>name year</text_search>
<information>1. title of a page
2. another page with a summary of the facts</information>
What is the name of this object? In which year was it built? Where is it located? Who made it?
The question is about the image. Answer with a short phrase. If you need more information, search.
Search results: thumbnails with titles. Summaries of web pages with their links.
The search failed. Go on with your own knowledge. You may search again or answer now.
"""


@dataclass
class TinySizes:
    vocab_size: int = 2048
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    vision_depth: int = 2
    vision_hidden: int = 64
    vision_heads: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 112 * 112
    init_range: float = 0.02
    rope_theta: float = (
        1_000_000.0  # Qwen2.5-VL's; a smaller base gives a short sequence more distinct rotations
    )


def _train_tokenizer(lines: Iterable[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(TOKEN_TEXTS.values()),
        # the alphabet's order changes between processes unless sorted
        initial_alphabet=sorted(pre_tokenizers.ByteLevel.alphabet()),
        show_progress=False,
    )
    tok.train_from_iterator(list(lines), trainer)
    return tok


def _template() -> str:
    return (Path(__file__).with_name("chat_template.jinja")).read_text(encoding="utf-8")


def build_tiny_tokenizer(lines: list[str], vocab_size: int) -> Any:
    """A fast tokenizer trained on `lines` (deterministic), with the special tokens and the chat template."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(lines, vocab_size),
        eos_token=TOKEN_TEXTS["im_end"],
        pad_token=TOKEN_TEXTS["endoftext"],
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[t for k, t in TOKEN_TEXTS.items() if k not in ("im_end", "endoftext")],
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = _template()
    return tokenizer


def build_tiny_model(
    out_dir: str | Path, seed: int = 0, corpus: str | Path | None = None, sizes: TinySizes | None = None
) -> Path:
    """Write a tiny Qwen2.5-VL (tokenizer, image processor, weights) to `out_dir` and return its path."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    s = sizes or TinySizes()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = _BUILTIN_CORPUS.splitlines()
    if corpus is not None:
        cp = Path(corpus)
        if not cp.is_file():
            raise FileNotFoundError(f"--corpus file not found: {cp}")
        lines += cp.read_text(encoding="utf-8").splitlines()

    # -- tokenizer --------------------------------------------------------------------------------------------
    tokenizer = build_tiny_tokenizer(lines, s.vocab_size)
    vocab = tokenizer.get_vocab()
    ids = {k: vocab[t] for k, t in TOKEN_TEXTS.items()}

    # -- image processor --------------------------------------------------------------------------------------
    image_processor = Qwen2VLImageProcessorPil(min_pixels=s.min_pixels, max_pixels=s.max_pixels)

    # -- model ------------------------------------------------------------------------------------------------
    head_dim = s.hidden // s.heads
    half = head_dim // 2
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # Qwen's 2:3:3 split of head_dim/2
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=s.hidden,
            intermediate_size=s.intermediate,
            num_hidden_layers=s.layers,
            num_attention_heads=s.heads,
            num_key_value_heads=s.kv_heads,
            max_position_embeddings=8192,
            rope_scaling={"type": "mrope", "mrope_section": section, "rope_theta": s.rope_theta},
            bos_token_id=ids["endoftext"],
            eos_token_id=ids["im_end"],
            pad_token_id=ids["endoftext"],
            initializer_range=s.init_range,
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            depth=s.vision_depth,
            hidden_size=s.vision_hidden,
            intermediate_size=2 * s.vision_hidden,
            num_heads=s.vision_heads,
            out_hidden_size=s.hidden,
            fullatt_block_indexes=[s.vision_depth - 1],
            window_size=112,
            initializer_range=s.init_range,
        ),
        image_token_id=ids["image_pad"],
        video_token_id=ids["video_pad"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        bos_token_id=ids["endoftext"],
        eos_token_id=ids["im_end"],
        pad_token_id=ids["endoftext"],
        tie_word_embeddings=False,
        initializer_range=s.init_range,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = ids["im_end"]
    model.generation_config.pad_token_id = ids["endoftext"]
    model.generation_config.bos_token_id = ids["endoftext"]

    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    image_processor.save_pretrained(str(out))
    (out / "tiny_build.json").write_text(
        json.dumps({"seed": seed, "corpus_lines": len(lines), "sizes": asdict(s)}, indent=2, sort_keys=True)
    )
    log.info("tiny model written to %s (vocab %d)", out, len(vocab))
    return out
