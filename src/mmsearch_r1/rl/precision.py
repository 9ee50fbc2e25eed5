"""Mixed precision on one process: fp32 master weights, a bf16 (or fp16) compute copy.

`model.param_dtype` is the dtype of the weights the optimizer updates (the master copy), of their gradients and
of the AdamW state; `model.compute_dtype` is the dtype the forward and backward run in. Under FSDP2 the pair
becomes a `MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=param)` on the sharded master
(`rl.distributed.shard_policy`). On one process, `MasterWeightPolicy` gives the same arithmetic:

- the HF model in `compute_dtype` runs the forward and backward (and the rollouts, and is the exported model);
- an fp32 twin of it holds the master weights: it is the module the optimizer, gradient clipping and checkpoints
  see (`parameters()`, `state_dict()`, `load_state_dict()` are the master's, under the same `model.` names as a
  plain `PolicyForward`);
- each compute parameter's gradient, as soon as backward has accumulated it, is added in fp32 to its master's
  `.grad` and freed (gradient accumulation over micro-batches therefore happens in fp32, as FSDP2's fp32
  reduce-scatter does), and after every `optimizer.step()` the masters are copied back into the compute copy.

Why a copy rather than `torch.autocast`: autocast keeps the residual stream, norms and embeddings in fp32 and
only runs matmuls in bf16, so one process would compute something different from the FSDP2 run with its bf16
parameters; with a compute copy both run exactly the same bf16 forward and differ only in the order of the fp32
gradient sums (tests/test_precision.py checks the 1- vs 2-process agreement and that every update is kept).
"""

from __future__ import annotations

from typing import Any

import torch

from mmsearch_r1.rl.batch import PolicyForward

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_mixed(param_dtype: str, compute_dtype: str) -> bool:
    """True when the master weights are wider than the compute (the only mixed case the config allows)."""
    return param_dtype != compute_dtype


class MasterWeightPolicy(PolicyForward):
    """A `PolicyForward` whose registered model is the fp32 master and whose forward runs a compute-dtype copy.

    `compute_model` must have the same parameter names and shapes as `master_model`; it is overwritten with the
    master's values here. Call `sync()` after changing the master outside `optimizer.step()` (e.g. after
    `load_state_dict`); `attach(optimizer)` makes every step end with a sync.
    """

    def __init__(
        self, master_model: Any, compute_model: Any, chunk_tokens: int = 1024, temperature: float = 1.0
    ) -> None:
        super().__init__(master_model, chunk_tokens, temperature)
        # not registered: parameters() / state_dict() are the master's only
        self.__dict__["_compute"] = PolicyForward(compute_model, chunk_tokens, temperature)
        master_model.requires_grad_(True)
        compute = dict(compute_model.named_parameters())
        self._pairs: list[tuple[torch.nn.Parameter, torch.nn.Parameter]] = []
        for name, master in master_model.named_parameters():
            if name not in compute or compute[name].shape != master.shape:
                raise ValueError(f"compute copy has no parameter {name!r} of shape {tuple(master.shape)}")
            c = compute[name]
            c.requires_grad_(master.requires_grad)
            self._pairs.append((master, c))
            if master.requires_grad:
                c.register_post_accumulate_grad_hook(self._make_hook(master))
        self.sync()

    @property
    def compute_model(self) -> Any:
        return self._compute.model

    @staticmethod
    def _make_hook(master: torch.nn.Parameter):
        def hook(p: torch.Tensor) -> None:
            g = p.grad.to(master.dtype)
            if master.grad is None:
                master.grad = g
            else:
                master.grad.add_(g)
            p.grad = None

        return hook

    @torch.no_grad()
    def sync(self) -> None:
        """Copy (round) every master weight into the compute copy."""
        for master, c in self._pairs:
            c.copy_(master)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.register_step_post_hook(lambda *_: self.sync())

    def forward(self, batch: dict[str, Any], with_entropy: bool = False) -> tuple[torch.Tensor, Any]:
        return self._compute(batch, with_entropy)

    def train(self, mode: bool = True) -> MasterWeightPolicy:
        super().train(mode)
        self._compute.train(mode)
        return self
