"""Training checkpoints: written atomically, the last K kept, resumed exactly; the final policy exported as HF.

Layout of `RUN_DIR/checkpoints/step_NNNNNN/`:
- `model/`: the policy as a plain Hugging Face directory (weights + tokenizer + image processor files), so a
  checkpoint is also a loadable model;
- `state.pt`: step, data position, optimizer and lr-scheduler state, the trainer's own state dict;
- `rng_rank{R}.pt`: each rank's python / numpy / torch (and CUDA) RNG states.

Checkpoints are *gathered* (not sharded): under FSDP2 the full model and optimizer state dicts are assembled with
`torch.distributed.checkpoint.state_dict` (`full_state_dict=True`, offloaded to CPU) and rank 0 writes them; on
resume every rank reads the full state and keeps its shard. This suits the model sizes this project trains
(the paper's 7B: about 15 GB of bf16 weights); a sharded DCP format would be the next step for larger ones.

Atomicity: everything is written into `.step_NNNNNN.tmp/` and renamed to `step_NNNNNN/` at the end; a crash
mid-write leaves only the temp directory, which `latest_checkpoint` ignores and the next save removes.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmsearch_r1.model import load_model
from mmsearch_r1.rl.distributed import DistInfo, barrier

log = logging.getLogger(__name__)


def capture_rng() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_hf(model: Any, renderer: Any, out: Path, state_dict: dict[str, Any] | None = None) -> Path:
    """Weights + tokenizer + image processor as one HF directory (temp dir, then rename)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True, state_dict=state_dict)
    renderer.tokenizer.save_pretrained(str(tmp))
    if renderer.image_processor is not None:  # None: a text-only model
        renderer.image_processor.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def full_model_state(policy: torch.nn.Module, info: DistInfo) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of the policy's HF model, on CPU, keys without the wrapper prefix."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if info.enabled:
        sd = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True))  # on every rank
    else:
        sd = {k: v.detach() for k, v in policy.state_dict().items()}
    return {k.removeprefix("model."): v for k, v in sd.items()}


def optimizer_state(policy: torch.nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if not info.enabled:
        return optimizer.state_dict()
    return get_optimizer_state_dict(
        policy, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    return sorted(p for p in root.glob("step_*") if p.is_dir() and (p / "state.pt").is_file())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    policy: torch.nn.Module,
    hf_model: Any | None,
    renderer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    keep_last: int,
    info: DistInfo,
) -> Path:
    """Write checkpoint `step` (collective under FSDP: every rank must call it). Returns its directory.

    `hf_model` is an unsharded HF model holding the current weights (the trainer's rollout copy, synced from the
    gathered state dict after every update when distributed); it is written with `save_pretrained`. None: there
    is no such copy (the vLLM engine holds the generation weights) and the full state dict is gathered instead.
    """
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:06d}"
    tmp = root / f".step_{step:06d}.tmp"
    optim_sd = optimizer_state(policy, optimizer, info)
    if info.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier(info)
    torch.save(capture_rng(), tmp / f"rng_rank{info.rank}.pt")
    state_dict = full_model_state(policy, info) if hf_model is None else None  # collective
    if info.is_main:
        save_hf(hf_model if hf_model is not None else policy.model, renderer, tmp / "model", state_dict)
        state = {
            "step": step,
            "optimizer": optim_sd,
            "scheduler": scheduler.state_dict(),
            "trainer": trainer_state,
            "world_size": info.world_size,
        }
        torch.save(state, tmp / "state.pt")
    barrier(info)
    if info.is_main:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoint_dirs(run_dir)[: -max(1, keep_last)]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint written: %s", final)
    barrier(info)
    return final


def load_checkpoint(
    path: str | Path,
    *,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    info: DistInfo,
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and this rank's RNG from `path`; returns the trainer state."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    path = Path(path)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    if state.get("world_size", 1) != info.world_size:
        raise ValueError(
            f"checkpoint {path} was written by {state.get('world_size')} processes; resuming with "
            f"{info.world_size} is not supported (the data shards would differ)"
        )
    # from_pretrained maps the saved names to the module's (transformers renames some on save)
    dtype = str(next(iter(policy.state_dict().values())).dtype).removeprefix("torch.")
    saved = load_model(path / "model", dtype=dtype, attn_implementation=None)
    sd = {f"model.{k}": v for k, v in saved.state_dict().items()}
    del saved
    if info.enabled:
        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(policy, sd, options=opts)
        set_optimizer_state_dict(policy, optimizer, state["optimizer"], options=opts)
    else:
        policy.load_state_dict(sd)
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = path / f"rng_rank{info.rank}.pt"
    if rng.is_file():
        restore_rng(torch.load(rng, map_location="cpu", weights_only=False))
    log.info("resumed from %s (step %d)", path, state["step"])
    return state["trainer"] | {"step": state["step"]}
