"""Supervised warm start: teach a model the protocol from multi-turn conversations with images.

Objective: the mean negative log-likelihood of the assistant tokens of a step's conversations,

    loss = - sum_{conversations c in step} sum_{t : mask_c[t] = 1} log p(x_t | x_<t) / (number of mask-1 tokens)

with the RL loss mask (`sft_data.tokenize_conversation`: assistant tokens and each turn's closing `<|im_end|>`;
prompt, tool and image tokens masked). The normalizer is the step's token count, so the loss and gradient do not
depend on how the step is split into micro-batches. Log-probs come the trainer's way: one full-sequence forward
with mRoPE position ids from `compute_position_ids` (images anywhere), hidden states -> `token_logprobs`
(chunked, no full-vocabulary logits kept).

Batching: `sft.batch_size` conversations per optimizer step (an endless stream of per-epoch permutations seeded by
`trainer.seed`; `sft.max_steps` or `sft.epochs` decides the length), `sft.micro_batch_size` per forward, right
padded to the longest in the micro-batch. Sequences are not packed (several conversations in one row would need a
block-diagonal attention mask and per-segment rope indices). AdamW with `sft.lr` and `optim.*` (betas, weight
decay, lr schedule, warm-up, gradient clipping).

Run directory (`sft.run_dir`): `config.yaml`, `metrics.jsonl` (one line per logged step: `sft/loss`,
`sft/tokens`, `sft/seq_tokens`, `sft/lr`, `sft/grad_norm`, `sft/epoch`, `perf/time_step_s`, `perf/tokens_per_s`),
`checkpoints/step_NNNNNN/` (model, optimizer, scheduler, RNG and data position; the last `trainer.keep_last`
kept) and the final model as a Hugging Face directory with its processor files (`sft.export_dir`, default
`RUN_DIR/final`), loadable with `load_model` / `load_processor`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmsearch_r1.config import Config
from mmsearch_r1.config_io import save_config
from mmsearch_r1.model import compute_position_ids, load_model, load_processor
from mmsearch_r1.rl.logprobs import token_logprobs
from mmsearch_r1.rl.schedules import build_scheduler
from mmsearch_r1.rl.sft_data import TokenizedConversation, read_conversations, tokenize_conversation

log = logging.getLogger(__name__)


@dataclass
class SFTResult:
    run_dir: Path
    final_dir: Path
    steps: int
    final_loss: float
    metrics_path: Path
    n_conversations: int
    n_dropped: int


def check_sft_config(cfg: Config) -> None:
    """ValueError naming each bad `sft.*` / `model.*` key."""
    s = cfg.sft
    errs = []
    if not s.train_files:
        errs.append("sft.train_files is empty: give at least one conversations JSONL or parquet file")
    if not cfg.model.path:
        errs.append("model.path is empty: give the directory of the model to fine-tune")
    for key in ("batch_size", "micro_batch_size", "max_length", "epochs", "log_every"):
        if getattr(s, key) < 1:
            errs.append(f"sft.{key}={getattr(s, key)} must be >= 1")
    if s.max_steps < 0 or s.save_every < 0:
        errs.append("sft.max_steps and sft.save_every must be >= 0")
    if not s.lr > 0:
        errs.append(f"sft.lr={s.lr} must be > 0")
    if errs:
        raise ValueError("invalid SFT config:\n  " + "\n  ".join(errs))


# ----------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------
def index_stream(n: int, seed: int, shuffle: bool, start: int = 0) -> Iterator[tuple[int, int]]:
    """(epoch, index) pairs: epoch e visits every index once, in a permutation seeded by (seed, e)."""
    pos = start
    while True:
        epoch, k = divmod(pos, n)
        order = list(range(n))
        if shuffle:
            random.Random(seed * 1_000_003 + epoch).shuffle(order)
        for i in order[k:]:
            yield epoch, i
        pos = (epoch + 1) * n


def collate(items: Sequence[TokenizedConversation], renderer: Any, device: Any) -> dict[str, Any]:
    """Right-padded model inputs; `targets[b, t]` is the token at t+1 where it is trained, else -100."""
    width = max(len(it.input_ids) for it in items)
    pad = renderer.special.pad
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    attn = torch.zeros((len(items), width), dtype=torch.long)
    targets = torch.full((len(items), width), -100, dtype=torch.long)
    for b, it in enumerate(items):
        n = len(it.input_ids)
        row = torch.tensor(it.input_ids)
        ids[b, :n] = row
        attn[b, :n] = 1
        trained = torch.tensor(it.loss_mask[1:], dtype=torch.bool)
        targets[b, : n - 1] = torch.where(trained, row[1:], torch.full_like(row[1:], -100))
    images = [im for it in items for im in it.images]
    pixel_values = grid = None
    if images:
        pixel_values, grid = renderer.encode_images(images)
        expected = [g for it in items for g in it.image_grid_thw]
        if [tuple(int(x) for x in g) for g in grid.tolist()] != expected:
            raise RuntimeError(
                "image processor grids differ from the grids the conversations were rendered with"
            )
        pixel_values, grid = pixel_values.to(device), grid.to(device)
    return {
        "input_ids": ids.to(device),
        "attention_mask": attn.to(device),
        "targets": targets.to(device),
        "pixel_values": pixel_values,
        "image_grid_thw": grid,
    }


def sequence_logprobs(model: Any, batch: dict[str, Any], chunk_tokens: int = 1024) -> torch.Tensor:
    """log p(targets) [B, T] (0 where targets < 0) from one full-sequence forward with mRoPE positions."""
    pos = compute_position_ids(model, batch["input_ids"], batch["image_grid_thw"], batch["attention_mask"])
    out = model.model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=pos,
        pixel_values=batch["pixel_values"],
        image_grid_thw=batch["image_grid_thw"],
        use_cache=False,
    )
    hidden = out.last_hidden_state
    logp, _ = token_logprobs(hidden, model.lm_head.weight, batch["targets"], chunk_tokens=chunk_tokens)
    return logp


# ----------------------------------------------------------------------------------------------------------
# Run directory
# ----------------------------------------------------------------------------------------------------------
def save_hf(model: Any, renderer: Any, out: Path) -> Path:
    """Model weights + tokenizer + image processor as one HF directory (written to a temp dir, then renamed)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    renderer.tokenizer.save_pretrained(str(tmp))
    renderer.image_processor.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _save_checkpoint(
    run: Path, step: int, model: Any, renderer: Any, state: dict[str, Any], keep: int
) -> Path:
    ckpt_root = run / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:06d}"
    tmp = ckpt_root / f".step_{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_hf(model, renderer, tmp / "model")
    torch.save(state, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    kept = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in kept[: max(0, len(kept) - max(1, keep))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------
def run_sft(cfg: Config, progress: Callable[[int, int, dict[str, float]], None] | None = None) -> SFTResult:
    """Fine-tune `model.path` on `sft.train_files`; `progress(step, total_steps, metrics)` after each step."""
    check_sft_config(cfg)
    s = cfg.sft
    torch.manual_seed(cfg.trainer.seed)
    random.seed(cfg.trainer.seed)
    run = Path(s.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")

    # -- model, data ------------------------------------------------------------------------------------------
    renderer = load_processor(cfg.model.path)
    model = load_model(
        cfg.model.path, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation
    )
    device = next(model.parameters()).device
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    convs = read_conversations(s.train_files)
    data: list[TokenizedConversation] = []
    for c in convs:
        tc = tokenize_conversation(c, renderer, s.max_length)
        if tc is None:
            log.warning(
                "conversation %s: first assistant turn ends past sft.max_length=%d; dropped",
                c.id,
                s.max_length,
            )
        else:
            data.append(tc)
    if not data:
        raise ValueError(f"no conversation fits sft.max_length={s.max_length} (read {len(convs)})")
    n_trunc = sum(tc.truncated for tc in data)
    log.info("SFT on %d conversations (%d dropped, %d truncated)", len(data), len(convs) - len(data), n_trunc)
    steps_per_epoch = math.ceil(len(data) / s.batch_size)
    total = s.max_steps if s.max_steps > 0 else s.epochs * steps_per_epoch

    # -- optimizer ----------------------------------------------------------------------------------------------
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=s.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    scheduler = build_scheduler(optimizer, o, total)
    stream = index_stream(len(data), cfg.trainer.seed, s.shuffle)
    metrics_path = run / "metrics.jsonl"
    metrics_path.write_text("")  # a fresh run: metrics of an earlier run in this directory are replaced
    loss_value = float("nan")

    for step in range(1, total + 1):
        t0 = time.perf_counter()
        picked = [next(stream) for _ in range(s.batch_size)]
        epoch = picked[-1][0]
        items = [data[i] for _, i in picked]
        n_tokens = sum(sum(it.loss_mask[1:]) for it in items)  # the first token is never a target

        # -- forward/backward over micro-batches, normalized by the step's token count ---------------------
        optimizer.zero_grad(set_to_none=True)
        nll_sum = 0.0
        for k in range(0, len(items), s.micro_batch_size):
            batch = collate(items[k : k + s.micro_batch_size], renderer, device)
            logp = sequence_logprobs(model, batch)
            nll = -logp.sum()
            (nll / max(1, n_tokens)).backward()
            nll_sum += float(nll.detach())

        # -- update ------------------------------------------------------------------------------------------
        clip = o.grad_clip if o.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        loss_value = nll_sum / max(1, n_tokens)

        # -- log, checkpoint ---------------------------------------------------------------------------------
        dt = time.perf_counter() - t0
        seq_tokens = sum(len(it.input_ids) for it in items)
        metrics = {
            "sft/loss": loss_value,
            "sft/tokens": float(n_tokens),
            "sft/seq_tokens": float(seq_tokens),
            "sft/lr": lr,
            "sft/grad_norm": grad_norm,
            "sft/epoch": float(epoch),
            "perf/time_step_s": dt,
            "perf/tokens_per_s": seq_tokens / dt if dt > 0 else 0.0,
        }
        if step % s.log_every == 0 or step == total:
            with metrics_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": step, **metrics}) + "\n")
        if progress is not None:
            progress(step, total, metrics)
        if (s.save_every and step % s.save_every == 0) or step == total:
            state = {
                "step": step,
                "data_position": step * s.batch_size,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
            }
            _save_checkpoint(run, step, model, renderer, state, cfg.trainer.keep_last)

    # -- export ----------------------------------------------------------------------------------------------
    final = save_hf(model.eval(), renderer, Path(s.export_dir) if s.export_dir else run / "final")
    log.info("SFT done: %d steps, last loss %.4f, model in %s", total, loss_value, final)
    return SFTResult(run, final, total, loss_value, metrics_path, len(data), len(convs) - len(data))
