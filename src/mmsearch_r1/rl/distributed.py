"""Multi-process data parallel with PyTorch FSDP2 (`torch.distributed.fsdp.fully_shard`), launched by torchrun.

`init_distributed()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); without it
the run is a single process and every helper here is a no-op. Backend: NCCL when CUDA is available (one GPU per
local rank), gloo on CPU. Standard torchrun flags (`--nproc_per_node`, `--nnodes`, `--rdzv_*`) work unchanged.

`shard_policy(policy, info, compute_dtype)` applies `fully_shard` to every text decoder layer and vision block of a
Qwen-VL model, then to the root module (the trainer's `PolicyForward` wrapper, so one call unshards the
embeddings, final norm and lm_head too); with a compute dtype narrower than the parameters, a
`MixedPrecisionPolicy` runs forward/backward in it and reduces gradients in the parameters' dtype (docs/memory.md). FSDP averages gradients over ranks; the trainer multiplies each rank's loss by the
world size and uses a global token normalizer, so the update equals the single-process one on the same global
batch.

Weight export: `iter_full_params(policy, info)` yields the policy's full tensors one at a time (a sharded
parameter is gathered, handed out, and can be dropped before the next), for loading into a generation engine
without ever holding a full unsharded copy of the model.

Reductions: `all_reduce_sums` (float sums over ranks), `all_gather_objects` (small Python records, e.g. the
per-trajectory metric rows), `barrier`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group torchrun set up (if any); returns this process's rank, world size and device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world <= 1:
        return DistInfo(0, 1, 0, device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local, device)
    log.info("rank %d of %d on %s", info.rank, info.world_size, device)
    return info


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def _blocks(model: Any) -> list[torch.nn.Module]:
    """Decoder layers and vision blocks of a Qwen-VL model (the FSDP units)."""
    out: list[torch.nn.Module] = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and (name.endswith("layers") or name.endswith("blocks")):
            out.extend(mod)
    return out


def shard_policy(
    policy: torch.nn.Module, info: DistInfo, compute_dtype: torch.dtype | None = None
) -> torch.nn.Module:
    """`fully_shard` each decoder layer / vision block, then the root; no-op for one process.

    The sharded parameters keep their own dtype (the master: gradients and optimizer state follow it). With a
    narrower `compute_dtype`, a `MixedPrecisionPolicy` casts the gathered parameters to it for forward and
    backward and reduce-scatters the gradients in the master's dtype. The batch is not cast
    (`cast_forward_inputs=False`: it holds the fp32 advantages and log-probs; pixel values are cast by the
    forward itself). A frozen module (the reference model) is sharded the same way, in its own dtype.
    """
    if not info.enabled:
        return policy
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    master = next(policy.parameters()).dtype
    kw: dict[str, Any] = {}
    if compute_dtype is not None and compute_dtype != master:
        kw["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=compute_dtype, reduce_dtype=master, cast_forward_inputs=False
        )
    for block in _blocks(policy):
        fully_shard(block, **kw)
    fully_shard(policy, **kw)
    return policy


def iter_full_params(
    policy: torch.nn.Module, info: DistInfo, *, prefix: str = "model."
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) for every parameter and persistent buffer of `policy`, one at a time.

    Names are the wrapped HF model's own (the wrapper `prefix` removed). Under FSDP2 each sharded tensor (a
    DTensor) is all-gathered when its turn comes, so every rank must iterate in the same order and to the end;
    the caller should drop each tensor before asking for the next. Single process: the live tensors, detached.
    """
    named = list(policy.named_parameters()) + [
        (n, b) for n, b in policy.named_buffers() if n.split(".")[-1] not in _nonpersistent(policy, n)
    ]
    for name, t in named:
        t = t.detach()
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        yield name.removeprefix(prefix), t


def _nonpersistent(policy: torch.nn.Module, buffer_name: str) -> set[str]:
    owner = policy.get_submodule(buffer_name.rpartition(".")[0]) if "." in buffer_name else policy
    return set(getattr(owner, "_non_persistent_buffers_set", ()))


def all_reduce_sums(values: list[float], info: DistInfo) -> list[float]:
    """Elementwise sum of `values` over ranks (float64)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_max(value: int, info: DistInfo) -> int:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj`, in rank order (pickled; for small records only)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
