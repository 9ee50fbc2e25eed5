"""Training checkpoints: written atomically, the last K kept, resumed exactly; the final policy exported as HF.

Layout of `RUN_DIR/checkpoints/step_NNNNNN/`:
- `model/`: the policy as a plain Hugging Face directory (weights + tokenizer + image processor files), so a
  checkpoint is also a loadable model;
- `state.pt`: step, data position, optimizer and lr-scheduler state, the trainer's own state dict;
- `rng_rank{R}.pt`: each rank's python / numpy / torch (and CUDA) RNG states.

Checkpoints are *gathered* (not sharded) and keep the master weights (`model.param_dtype`): under FSDP2 the
weights are gathered one tensor at a time into rank 0's CPU memory and the optimizer state dict is assembled with
`torch.distributed.checkpoint.state_dict` (`full_state_dict=True`, offloaded to rank 0's CPU); rank 0 writes
them; on resume every rank reads the full state and keeps its shard. This suits the model sizes this project trains
(the paper's 7B: about 15 GB of bf16 weights); a sharded DCP format would be the next step for larger ones.

Atomicity: everything is written into `.step_NNNNNN.tmp/` and renamed to `step_NNNNNN/` at the end; a crash
mid-write leaves only the temp directory, which `latest_checkpoint` ignores and the next save removes.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmsearch_r1.model import load_model
from mmsearch_r1.rl.distributed import DistInfo, barrier, iter_full_params

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


def _set_config_dtype(path: Path, dtype: torch.dtype) -> None:
    cfg = json.loads(path.read_text(encoding="utf-8"))
    name = str(dtype).removeprefix("torch.")
    for node in [cfg, *(v for v in cfg.values() if isinstance(v, dict))]:
        for key in ("dtype", "torch_dtype"):
            if key in node:
                node[key] = name
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_hf(model: Any, renderer: Any, out: Path, state_dict: dict[str, Any] | None = None) -> Path:
    """Weights + tokenizer + image processor as one HF directory (temp dir, then rename)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True, state_dict=state_dict)
    if state_dict:  # config.json names the dtype of the weights written (the master's, not the model's)
        _set_config_dtype(tmp / "config.json", next(iter(state_dict.values())).dtype)
    renderer.tokenizer.save_pretrained(str(tmp))
    if renderer.image_processor is not None:  # None: a text-only model
        renderer.image_processor.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def master_weights_on_main(policy: torch.nn.Module, info: DistInfo) -> dict[str, torch.Tensor] | None:
    """The policy's (master) weights, gathered one tensor at a time into a CPU dict on the main rank only."""
    out: dict[str, torch.Tensor] | None = {} if info.is_main else None
    for name, t in iter_full_params(policy, info):
        if out is not None:
            out[name] = t.to("cpu", copy=True)
        del t
    return out


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

    `hf_model` is an unsharded HF model of the same architecture (the rollout copy); `model/` is written with its
    `save_pretrained` but holds the policy's master weights (in `model.param_dtype`), gathered one tensor at a
    time to the main rank's CPU memory, so a resume continues from the exact master.
    """
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:06d}"
    tmp = root / f".step_{step:06d}.tmp"
    optim_sd = optimizer_state(policy, optimizer, info)
    weights = master_weights_on_main(policy, info)
    if info.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier(info)
    torch.save(capture_rng(), tmp / f"rng_rank{info.rank}.pt")
    if info.is_main:
        save_hf(hf_model, renderer, tmp / "model", state_dict=weights)
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
