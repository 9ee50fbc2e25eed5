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
`trainer.seed`; `sft.max_steps` or `sft.epochs` decides the length), `sft.micro_batch_size` per forward, right
padded to the longest in the micro-batch; a step's conversations are sorted by length before they are split into
micro-batches, so a micro-batch pads less (the step's gradient does not depend on the split). Under torchrun
each rank takes its contiguous `batch_size / world_size` share of the step's conversations; the normalizer is still the whole step's token count. Model, precision
(`model.param_dtype` / `model.compute_dtype`), FSDP2, optimizer, checkpoints and the logger come from the GRPO
trainer's set-up (rl/setup.py). Sequences are not packed (several conversations in one row would need a
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
from mmsearch_r1.config_io import save_config
from mmsearch_r1.model import load_processor
from mmsearch_r1.rl import checkpoint as ckpt
from mmsearch_r1.rl import distributed as D
from mmsearch_r1.rl.batch import PolicyForward
from mmsearch_r1.rl.batch import collate as collate_trajectories
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


def check_sft_config(cfg: Config, world_size: int = 1) -> None:
    """ValueError naming each bad `sft.*` / `model.*` key."""
    s = cfg.sft
    errs = []
    if s.batch_size % world_size:
        errs.append(
            f"sft.batch_size={s.batch_size} must be divisible by the number of processes ({world_size})"
        )
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
    from mmsearch_r1.rl import setup as S

    info = D.init_distributed()
    check_sft_config(cfg, info.world_size)
    s = cfg.sft
    torch.manual_seed(cfg.trainer.seed)
    random.seed(cfg.trainer.seed)
    run = Path(s.run_dir)
    if info.is_main:
        run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml")

    # -- data, then model, optimizer (rl/setup.py: the GRPO trainer's own set-up) ---------------------------------
    if resume and ckpt.latest_checkpoint(run) is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {run / 'checkpoints'}")
    renderer = load_processor(cfg.model.path, cfg.data.min_pixels, cfg.data.max_pixels)
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
    setup = S.build_setup(cfg, info, lr=s.lr, total_steps=total)
    model, policy, params, optimizer, scheduler = (
        setup.model,
        setup.policy,
        setup.params,
        setup.optimizer,
        setup.scheduler,
    )
    model.train()
    o = cfg.optim
    start, data_pos = 0, 0
    if resume:
        state = S.resume(setup, run)
        start, data_pos = state["step"], state["data_position"]
    logger = S.open_logger(cfg, run, info, resume, start)
    stream = index_stream(len(data), cfg.trainer.seed, s.shuffle, start=data_pos)
    loss_value = float("nan")
    W, share = info.world_size, s.batch_size // info.world_size

    for step in range(start + 1, total + 1):
        t0 = time.perf_counter()
        picked = [next(stream) for _ in range(s.batch_size)]
        data_pos += s.batch_size
        items = [data[i] for _, i in picked]
        n_tokens = sum(
            sum(it.loss_mask) for it in items
        )  # of the whole step (every rank sees the same picks)
        # this rank's share, shortest first: micro-batches of similar lengths pad less (same step gradient)
        mine = sorted(items[info.rank * share : (info.rank + 1) * share], key=lambda it: len(it.input_ids))

        # -- forward/backward over micro-batches, normalized by the step's token count ---------------------
        optimizer.zero_grad(set_to_none=True)
        nll_total = 0.0
        for k in range(0, len(mine), s.micro_batch_size):
            batch = collate(mine[k : k + s.micro_batch_size], renderer, info.device)
            nll, _ = masked_nll_sum(policy, batch)
            (nll * (W / max(1, n_tokens))).backward()  # FSDP averages gradients over the W ranks
            nll_total += float(nll.detach())
        nll_total = D.all_reduce_sums([nll_total], info)[0]

        # -- update ------------------------------------------------------------------------------------------
        clip = o.grad_clip if o.grad_clip > 0 else float("inf")
        gn = torch.nn.utils.clip_grad_norm_(params, clip)
        grad_norm = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)
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
        if logger is not None and (step % s.log_every == 0 or step == total):
            logger.log(step, metrics)
        if progress is not None:
            progress(step, total, metrics)
        if (s.save_every and step % s.save_every == 0) or step == total:
            S.save(setup, run, step, {"data_position": data_pos}, cfg.trainer.keep_last)

    # -- export ----------------------------------------------------------------------------------------------
    if logger is not None:
        logger.close()
    gen = setup.gen_model
    if (
        setup.separate_gen_copy
    ):  # under FSDP: the unsharded copy takes the trained weights, one tensor at a time
        with torch.no_grad():
            own = dict(gen.named_parameters()) | dict(gen.named_buffers())
            for name, t in D.iter_full_params(policy, info):
                own[name].copy_(t)
    export = Path(s.export_dir) if s.export_dir else run / "final"
    final = ckpt.save_hf(gen.eval(), renderer, export) if info.is_main else export
    D.barrier(info)
    log.info("SFT done: steps %d..%d, last loss %.4f, model in %s", start + 1, total, loss_value, final)
    return SFTResult(run, final, total, loss_value, run / "metrics.jsonl", len(data), len(convs) - len(data))
