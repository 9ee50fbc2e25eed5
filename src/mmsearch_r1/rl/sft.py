"""Supervised warm start: teach a model the protocol from multi-turn conversations with images.

Objective: the mean negative log-likelihood of the assistant tokens of a step's conversations,

    loss = - sum_{conversations c in step} sum_{t : mask_c[t] = 1} log p(x_t | x_<t) / (number of mask-1 tokens)

with the RL loss mask (`sft_data.tokenize_conversation`: assistant tokens and each turn's closing `<|im_end|>`;
prompt, tool and image tokens masked). The normalizer is the step's token count, so the loss and gradient do not
depend on how the step is split into micro-batches. Log-probs come through the GRPO trainer's own path: each
conversation becomes a `Trajectory` (prompt = the tokens before the first trained one), batched by
`rl.batch.collate` and scored by `rl.batch.PolicyForward` (one full-sequence forward, mRoPE position ids from
`compute_position_ids`, images anywhere, chunked `token_logprobs` without full-vocabulary logits).

Batching: `sft.batch_size` conversations per optimizer step (an endless stream of per-epoch permutations seeded by
`trainer.seed`; `sft.max_steps` or `sft.epochs` decides the length; single process, on CUDA when available), `sft.micro_batch_size` per forward, right
padded to the longest in the micro-batch. Sequences are not packed (several conversations in one row would need a
block-diagonal attention mask and per-segment rope indices). AdamW with `sft.lr` and `optim.*` (betas, weight
decay, lr schedule, warm-up, gradient clipping).

Run directory (`sft.run_dir`): `config.yaml`, `metrics.jsonl` (one line per logged step: `sft/loss`,
`sft/tokens`, `sft/seq_tokens`, `sft/lr`, `sft/grad_norm`, `sft/epoch`, `perf/time_step_s`, `perf/tokens_per_s`),
`checkpoints/step_NNNNNN/` (`rl.checkpoint.save_checkpoint`: model as an HF directory, optimizer, scheduler,
RNG and data position; the last `trainer.keep_last` kept; `resume=True` continues exactly) and the final model as a Hugging Face directory with its processor files (`sft.export_dir`, default
`RUN_DIR/final`), loadable with `load_model` / `load_processor`.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmsearch_r1.config import Config
from mmsearch_r1.config_io import config_to_dict, save_config
from mmsearch_r1.model import load_model, load_processor
from mmsearch_r1.rl import checkpoint as ckpt
from mmsearch_r1.rl.batch import PolicyForward
from mmsearch_r1.rl.batch import collate as collate_trajectories
from mmsearch_r1.rl.distributed import DistInfo
from mmsearch_r1.rl.metrics import MetricLogger, read_metrics
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
    """The RL trainer's micro-batch (`rl.batch.collate`) of conversations seen as trajectories."""
    return collate_trajectories([it.as_trajectory() for it in items], renderer, device)


def masked_nll_sum(policy: PolicyForward, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """(- sum of the log-probs of the trained tokens, their count) through the trainer's forward path."""
    logp, _ = policy(batch)
    return -(logp * batch["mask"]).sum(), int(batch["mask"].sum())


# ----------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------
def run_sft(
    cfg: Config,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    resume: bool = False,
) -> SFTResult:
    """Fine-tune `model.path` on `sft.train_files`; `progress(step, total_steps, metrics)` after each step.

    `resume`: continue from the last checkpoint in `sft.run_dir` (model, optimizer, scheduler, RNG, data
    position), keeping the metrics lines up to it; the result equals an uninterrupted run.
    """
    check_sft_config(cfg)
    s = cfg.sft
    torch.manual_seed(cfg.trainer.seed)
    random.seed(cfg.trainer.seed)
    run = Path(s.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")
    info = DistInfo(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))

    # -- model, data ------------------------------------------------------------------------------------------
    last = ckpt.latest_checkpoint(run) if resume else None
    if resume and last is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {run / 'checkpoints'}")
    renderer = load_processor(cfg.model.path)
    model = load_model(cfg.model.path, cfg.model.dtype, str(info.device), cfg.model.attn_implementation)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    policy = PolicyForward(model, cfg.grpo.logprob_chunk_tokens)
    convs = read_conversations(s.train_files)
    data: list[TokenizedConversation] = []
    for c in convs:
        tc = tokenize_conversation(c, renderer, s.max_length)
        if tc is None:
            log.warning(
                "conversation %s: its first assistant turn ends past sft.max_length=%d; dropped",
                c.id,
                s.max_length,
            )
        else:
            data.append(tc)
    if not data:
        raise ValueError(f"no conversation fits sft.max_length={s.max_length} (read {len(convs)})")
    n_trunc = sum(tc.truncated for tc in data)
    log.info("SFT on %d conversations (%d dropped, %d truncated)", len(data), len(convs) - len(data), n_trunc)
    total = s.max_steps if s.max_steps > 0 else s.epochs * math.ceil(len(data) / s.batch_size)

    # -- optimizer, resume, logger ------------------------------------------------------------------------------
    params = [p for p in policy.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        params, lr=s.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps
    )
    scheduler = build_scheduler(optimizer, o, total)
    start, data_pos = 0, 0
    if last is not None:
        state = ckpt.load_checkpoint(last, policy=policy, optimizer=optimizer, scheduler=scheduler, info=info)
        start, data_pos = state["step"], state["data_position"]
    old = read_metrics(run / "metrics.jsonl") if resume and (run / "metrics.jsonl").is_file() else []
    logger = MetricLogger(
        run,
        tensorboard=cfg.trainer.log_tensorboard,
        wandb=cfg.trainer.log_wandb,
        wandb_project=cfg.trainer.wandb_project,
        config=config_to_dict(cfg),
    )
    for row in old:
        if row["step"] <= start:
            logger.log(row.pop("step"), row)
    stream = index_stream(len(data), cfg.trainer.seed, s.shuffle, start=data_pos)
    loss_value = float("nan")

    for step in range(start + 1, total + 1):
        t0 = time.perf_counter()
        picked = [next(stream) for _ in range(s.batch_size)]
        data_pos += s.batch_size
        items = [data[i] for _, i in picked]
        n_tokens = sum(sum(it.loss_mask) for it in items)

        # -- forward/backward over micro-batches, normalized by the step's token count ---------------------
        optimizer.zero_grad(set_to_none=True)
        nll_total = 0.0
        for k in range(0, len(items), s.micro_batch_size):
            batch = collate(items[k : k + s.micro_batch_size], renderer, info.device)
            nll, _ = masked_nll_sum(policy, batch)
            (nll / max(1, n_tokens)).backward()
            nll_total += float(nll.detach())

        # -- update ------------------------------------------------------------------------------------------
        clip = o.grad_clip if o.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        loss_value = nll_total / max(1, n_tokens)

        # -- log, checkpoint ---------------------------------------------------------------------------------
        dt = time.perf_counter() - t0
        seq_tokens = sum(len(it.input_ids) for it in items)
        metrics = {
            "sft/loss": loss_value,
            "sft/tokens": float(n_tokens),
            "sft/seq_tokens": float(seq_tokens),
            "sft/lr": lr,
            "sft/grad_norm": grad_norm,
            "sft/epoch": float(picked[-1][0]),
            "perf/time_step_s": dt,
            "perf/tokens_per_s": seq_tokens / dt if dt > 0 else 0.0,
        }
        if step % s.log_every == 0 or step == total:
            logger.log(step, metrics)
        if progress is not None:
            progress(step, total, metrics)
        if (s.save_every and step % s.save_every == 0) or step == total:
            ckpt.save_checkpoint(
                run,
                step,
                policy=policy,
                hf_model=model,
                renderer=renderer,
                optimizer=optimizer,
                scheduler=scheduler,
                trainer_state={"data_position": data_pos},
                keep_last=cfg.trainer.keep_last,
                info=info,
            )

    # -- export ----------------------------------------------------------------------------------------------
    logger.close()
    final = ckpt.save_hf(model.eval(), renderer, Path(s.export_dir) if s.export_dir else run / "final")
    log.info("SFT done: steps %d..%d, last loss %.4f, model in %s", start + 1, total, loss_value, final)
    return SFTResult(run, final, total, loss_value, run / "metrics.jsonl", len(data), len(convs) - len(data))
