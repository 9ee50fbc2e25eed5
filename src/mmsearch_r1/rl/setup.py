"""One training set-up for GRPO (`rl.trainer`) and SFT (`rl.sft`): models, precision, FSDP, optimizer,
checkpoint/resume and the metric logger, written once.

`build_setup(cfg, info, lr=..., total_steps=...)` loads the policy as configured:

| processes | `model.param_dtype` / `compute_dtype` | policy (what the optimizer and checkpoints see) |
|---|---|---|
| 1 | equal | `PolicyForward` over the model in that dtype |
| 1 | float32 / bfloat16 | `precision.MasterWeightPolicy`: fp32 master, bf16 compute copy |
| N (torchrun) | any allowed pair | `PolicyForward` over the master, FSDP2-sharded, `MixedPrecisionPolicy` for the compute dtype |

`model` is the HF model that runs forward and backward (train/eval mode and gradient checkpointing apply to it).
`gen_model` is an unsharded copy for generation and export, in the compute dtype: the compute model itself on
one process; a separate copy under FSDP, refreshed from the sharded master one tensor at a time
(`distributed.iter_full_params`). The reference model (`with_ref`, GRPO with `grpo.kl_coef > 0`) is a frozen
copy in the compute dtype, sharded like the policy when there are several processes.

`save(...)` / `resume(...)` wrap `rl.checkpoint` (the checkpoint keeps the master weights in `param_dtype`) and
re-sync the compute copy after a resume; `open_logger` re-logs the metrics of a resumed run up to its step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmsearch_r1.config import Config
from mmsearch_r1.config_io import config_to_dict
from mmsearch_r1.rl import checkpoint as ckpt
from mmsearch_r1.rl import distributed as D
from mmsearch_r1.rl.batch import PolicyForward
from mmsearch_r1.rl.precision import DTYPES, MasterWeightPolicy, is_mixed

log = logging.getLogger(__name__)


@dataclass
class TrainSetup:
    info: D.DistInfo
    renderer: Any
    model: Any
    policy: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ref: PolicyForward | None
    gen_model: Any

    @property
    def separate_gen_copy(self) -> bool:
        """True when `gen_model` must be refreshed from the policy after each update."""
        return self.gen_model is not self.model


def build_setup(
    cfg: Config,
    info: D.DistInfo,
    *,
    lr: float,
    total_steps: int,
    logprob_temperature: float = 1.0,
    with_ref: bool = False,
    gen_copy: bool = True,
) -> TrainSetup:
    """`gen_copy=False`: the generation engine holds its own weights (vLLM), so no HF copy is built under FSDP;
    `gen_model` is then the (sharded) compute model, used only to name the architecture when saving."""
    from mmsearch_r1.model import load_model, load_processor
    from mmsearch_r1.rl.schedules import build_scheduler

    m = cfg.model
    pd, cd = m.param_dtype, m.compute_dtype
    chunk = cfg.grpo.logprob_chunk_tokens
    renderer = load_processor(m.path, cfg.data.min_pixels, cfg.data.max_pixels)

    def load(dtype: str) -> Any:
        return load_model(m.path, dtype, str(info.device), m.attn_implementation)

    model = load(cd if is_mixed(pd, cd) and not info.enabled else pd)  # the model forward/backward runs on
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if info.enabled:  # sharded right away: the full master exists only during start-up
        policy: torch.nn.Module = D.shard_policy(
            PolicyForward(model, chunk, logprob_temperature), info, DTYPES[cd]
        )
        gen_model = load(cd) if gen_copy else model
    elif is_mixed(pd, cd):
        policy = MasterWeightPolicy(load(pd), model, chunk, logprob_temperature)
        gen_model = model
    else:
        policy = PolicyForward(model, chunk, logprob_temperature)
        gen_model = model
    ref = None
    if with_ref:
        ref = PolicyForward(load(cd).requires_grad_(False), chunk, logprob_temperature)
        ref = D.shard_policy(ref, info)
    params = [p for p in policy.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
    if isinstance(policy, MasterWeightPolicy):
        policy.attach(optimizer)
    scheduler = build_scheduler(optimizer, o, total_steps)
    log.info(
        "policy: %s master, %s compute, %d process(es)%s",
        pd,
        cd,
        info.world_size,
        ", reference model in " + cd if ref is not None else "",
    )
    return TrainSetup(info, renderer, model, policy, params, optimizer, scheduler, ref, gen_model)


def resume(setup: TrainSetup, run: Path) -> dict[str, Any]:
    """Restore the last checkpoint of `run` (FileNotFoundError if none); returns the trainer state with `step`."""
    last = ckpt.latest_checkpoint(run)
    if last is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {run / 'checkpoints'}")
    state = ckpt.load_checkpoint(
        last, policy=setup.policy, optimizer=setup.optimizer, scheduler=setup.scheduler, info=setup.info
    )
    if isinstance(setup.policy, MasterWeightPolicy):
        setup.policy.sync()
    return state


def save(setup: TrainSetup, run: Path, step: int, trainer_state: dict[str, Any], keep_last: int) -> Path:
    return ckpt.save_checkpoint(
        run,
        step,
        policy=setup.policy,
        hf_model=setup.gen_model,
        renderer=setup.renderer,
        optimizer=setup.optimizer,
        scheduler=setup.scheduler,
        trainer_state=trainer_state,
        keep_last=keep_last,
        info=setup.info,
    )


def open_logger(cfg: Config, run: Path, info: D.DistInfo, resumed: bool, start: int) -> Any:
    """The metric logger (main rank only, else None); a resumed run keeps its metric lines up to `start`."""
    from mmsearch_r1.rl.metrics import MetricLogger

    if not info.is_main:
        return None
    t = cfg.trainer
    logger = MetricLogger(
        run,
        tensorboard=t.log_tensorboard,
        wandb=t.log_wandb,
        wandb_project=t.wandb_project,
        config=config_to_dict(cfg),
        resume_step=start if resumed else None,  # keeps rows <= start, a torn last line dropped
    )
    return logger
