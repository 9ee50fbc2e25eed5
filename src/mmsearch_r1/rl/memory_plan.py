"""Per-rank GPU memory of a training run, by component, before launch (`mmsearch-r1 plan`, and `train` at start).

Model sizes come from the architecture, not from a rule of thumb: the model is built on PyTorch's meta device
from its HF config (a local `model.path` directory, or the built-in configs of the released Qwen2.5-VL 3B / 7B
checkpoints when `model.path` names them), so every parameter's shape is known; `--params N` replaces the
count (then each parameter is taken as sharded N / ranks).

Components (bytes per rank; W = processes, p = `model.param_dtype` bytes, c = `model.compute_dtype` bytes):

| component | exact? | counted as |
|---|---|---|
| master params | exact | each parameter's FSDP2 shard on rank 0 (ceil(dim0 / W) rows), in p |
| gradients | exact | the same shards, in p (FSDP2 reduces into the master dtype); held from backward to the next zero_grad |
| optimizer (AdamW) | exact | exp_avg + exp_avg_sq: twice the shards, in p (the `step` counters are CPU scalars) |
| compute copy / gathers | estimate | one process, mixed: the whole model in c; FSDP: the root unit (embeddings, lm_head, vision patch embed and merger) plus two of the largest block, for parameters and their gradients, in c |
| reference model | exact | `grpo.kl_coef > 0`: the model in c, sharded like the policy |
| rollout weights | exact | the unsharded generation copy in c (HF engine, W > 1: resident all the time; vLLM: only while rolling out) |
| KV cache | estimate | `rollout.max_batch_size` sequences of `max_prompt_tokens + max_response_tokens`: 2 x layers x kv heads x head dim, in c (rollout phase only) |
| activations | estimate | a micro-batch (`trainer.micro_batch_size` sequences of the longest length) through the text decoder: with checkpointing one hidden state per layer plus two layers' full activations; without, every layer's |
| log-prob chunk | estimate | `grpo.logprob_chunk_tokens` x vocabulary logits in c, their fp32 log-softmax and its gradient |
| reserve | fixed | 2 GiB for the CUDA context and allocator fragmentation |

The peak is the larger of the rollout phase and the training phase (the components of each are marked in the
table), plus the reserve. Vision-tower activations are not counted (images add at most `max_pixels / 784`
tokens each, small next to the response budget). docs/memory.md explains the figures for the paper config.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsearch_r1.config import Config

GiB = 1024**3
RESERVE_BYTES = 2 * GiB
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_BLOCK = re.compile(r"^(.*(?:layers|blocks))\.(\d+)\.")

_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    out_hidden_size=3584,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    in_chans=3,
    hidden_act="silu",
)
_TEXT_7B = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=128000,
    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
    tie_word_embeddings=False,
)
_TEXT_3B = dict(
    _TEXT_7B,
    vocab_size=151936,
    hidden_size=2048,
    intermediate_size=11008,
    num_hidden_layers=36,
    num_attention_heads=16,
    num_key_value_heads=2,
    tie_word_embeddings=True,
)
# the released checkpoints' config.json values (architecture only)
BUILTIN: dict[str, tuple[dict, dict]] = {
    "Qwen/Qwen2.5-VL-7B-Instruct": (_TEXT_7B, _VISION),
    "Qwen/Qwen2.5-VL-3B-Instruct": (_TEXT_3B, dict(_VISION, out_hidden_size=2048)),
}


@dataclass
class ModelShape:
    name: str
    params: list[tuple[str, tuple[int, ...]]]  # every parameter's name and shape
    hidden: int
    layers: int
    intermediate: int
    kv_dim: int
    vocab: int
    n_params_override: int | None = None

    @property
    def n_params(self) -> int:
        if self.n_params_override is not None:
            return self.n_params_override
        return sum(_numel(s) for _, s in self.params)

    def units(self) -> tuple[int, int]:
        """(root unit parameters, largest block parameters): FSDP's all-gather units."""
        blocks: dict[tuple[str, str], int] = {}
        root = 0
        for name, s in self.params:
            m = _BLOCK.match(name)
            if m:
                blocks[(m.group(1), m.group(2))] = blocks.get((m.group(1), m.group(2)), 0) + _numel(s)
            else:
                root += _numel(s)
        scale = self.n_params / max(1, sum(_numel(s) for _, s in self.params))
        return int(root * scale), int(max(blocks.values(), default=0) * scale)

    def sharded_numel(self, world: int) -> int:
        """Elements of rank 0's FSDP2 shards (each parameter chunked along dim 0 over `world` ranks)."""
        if self.n_params_override is not None:
            return -(-self.n_params_override // world)
        total = 0
        for _, s in self.params:
            rows = s[0] if s else 1
            total += min(rows, -(-rows // world)) * (_numel(s) // max(1, rows))
        return total


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _shape_from_hf_config(hf_cfg: Any, name: str) -> ModelShape:
    import torch

    from mmsearch_r1.model.loading import model_class

    cls = model_class(hf_cfg.model_type)
    with torch.device("meta"):
        model = cls(hf_cfg)
    t = hf_cfg.text_config if hasattr(hf_cfg, "text_config") else hf_cfg
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    return ModelShape(
        name=name,
        params=[(n, tuple(p.shape)) for n, p in model.named_parameters()],
        hidden=t.hidden_size,
        layers=t.num_hidden_layers,
        intermediate=t.intermediate_size,
        kv_dim=t.num_key_value_heads * head_dim,
        vocab=t.vocab_size,
    )


def model_shape(path: str, params: float | None = None) -> ModelShape:
    """The architecture of `path` (a local HF directory or a built-in name); `params` overrides the count."""
    p = Path(path)
    if (p / "config.json").is_file():
        from transformers import AutoConfig

        shape = _shape_from_hf_config(AutoConfig.from_pretrained(str(p)), str(p))
    elif path in BUILTIN:
        from transformers import Qwen2_5_VLConfig

        text, vision = BUILTIN[path]
        hf = Qwen2_5_VLConfig(
            text_config=text, vision_config=vision, tie_word_embeddings=text["tie_word_embeddings"]
        )
        shape = _shape_from_hf_config(hf, path)
    else:
        raise FileNotFoundError(
            f"model.path={path!r} is neither a local model directory (with config.json) nor one of "
            f"{', '.join(BUILTIN)}: give a model directory"
        )
    if params is not None:
        shape.n_params_override = int(params)
    return shape


@dataclass
class Row:
    name: str
    bytes: int
    phase: str  # "both" | "rollout" | "train" | "info"
    exact: bool
    how: str


@dataclass
class MemoryPlan:
    model: str
    n_params: int
    world_size: int
    gpu_bytes: int | None
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what cannot work whatever the total

    def phase_bytes(self, phase: str) -> int:
        return sum(r.bytes for r in self.rows if r.phase in ("both", phase))

    @property
    def peak_bytes(self) -> int:
        return max(self.phase_bytes("rollout"), self.phase_bytes("train")) + RESERVE_BYTES

    @property
    def fits(self) -> bool | None:
        if self.gpu_bytes is None:
            return None
        return self.peak_bytes <= self.gpu_bytes and not self.problems

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def advice(self) -> list[str]:
        """What to change, for the largest components of the peak phase."""
        peak = "train" if self.phase_bytes("train") >= self.phase_bytes("rollout") else "rollout"
        tips = {
            "master params": "more processes (--gpus / torchrun): sharded, shrinks as 1/N",
            "gradients": "more processes: sharded, shrinks as 1/N",
            "optimizer (AdamW)": "more processes: sharded, shrinks as 1/N",
            "compute copy / gathers": "torchrun with 2+ processes (one process keeps a whole compute copy)",
            "reference model": "grpo.kl_coef=0 (no reference model) or more processes",
            "rollout weights": "rollout.engine=vllm (weights released while training)",
            "vLLM pool (weights + KV cache)": "rollout.vllm_gpu_memory_utilization (it is released while training)",
            "KV cache": "rollout.max_batch_size, rollout.max_response_tokens or rollout.max_prompt_tokens",
            "activations": "model.gradient_checkpointing=true, trainer.micro_batch_size or the token budgets",
            "log-prob chunk": "grpo.logprob_chunk_tokens",
        }
        rows = sorted(
            (r for r in self.rows if r.phase in ("both", peak) and r.name in tips), key=lambda r: -r.bytes
        )
        return [f"{r.name} ({r.bytes / GiB:.1f} GiB): {tips[r.name]}" for r in rows[:3]]

    def table(self) -> str:
        gpus = (
            f"{self.world_size} x {self.gpu_bytes / GiB:.0f} GiB"
            if self.gpu_bytes
            else f"{self.world_size} GPU(s)"
        )
        lines = [
            f"memory plan: {self.model} ({self.n_params:,} parameters) on {gpus}, per rank",
            f"  {'component':<34}{'GiB':>8}  {'phase':<8}{'':<9}how",
        ]
        for r in self.rows:
            kind = "exact" if r.exact else "estimate"
            lines.append(f"  {r.name:<34}{r.bytes / GiB:>8.2f}  {r.phase:<8}{kind:<9}{r.how}")
        lines.append(f"  {'reserve (CUDA context, allocator)':<34}{RESERVE_BYTES / GiB:>8.2f}")
        lines.append(
            f"  rollout phase {self.phase_bytes('rollout') / GiB:.2f} GiB, training phase "
            f"{self.phase_bytes('train') / GiB:.2f} GiB; peak with reserve {self.peak_bytes / GiB:.2f} GiB"
        )
        if self.fits is True:
            lines.append(f"  fits: {self.peak_bytes / GiB:.1f} of {self.gpu_bytes / GiB:.1f} GiB per GPU")
        elif self.fits is False:
            lines.append(
                f"  DOES NOT FIT: {self.peak_bytes / GiB:.1f} GiB needed, {self.gpu_bytes / GiB:.1f} GiB per GPU; "
                "change:"
            )
            lines += [f"    - {a}" for a in self.problems or self.advice()]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(
            {
                "model": self.model,
                "n_params": self.n_params,
                "world_size": self.world_size,
                "gpu_bytes": self.gpu_bytes,
                "peak_bytes": self.peak_bytes,
                "fits": self.fits,
                "problems": self.problems,
                "rows": [r.__dict__ for r in self.rows],
            }
        )


def plan_memory(
    cfg: Config,
    world_size: int,
    gpu_mem_gib: float | None = None,
    shape: ModelShape | None = None,
    params: float | None = None,
) -> MemoryPlan:
    """The plan for `cfg` on `world_size` processes (one GPU each) of `gpu_mem_gib` GiB (module docstring)."""
    if world_size < 1:
        raise ValueError(f"--gpus must be >= 1, got {world_size}")
    shape = shape or model_shape(cfg.model.path, params)
    m, r, t, g = cfg.model, cfg.rollout, cfg.trainer, cfg.grpo
    pb, cb = _BYTES[m.param_dtype], _BYTES[m.compute_dtype]
    W, P = world_size, shape.n_params
    mixed = m.param_dtype != m.compute_dtype
    shard = shape.sharded_numel(W)
    plan = MemoryPlan(shape.name, P, W, int(gpu_mem_gib * GiB) if gpu_mem_gib else None)
    add = plan.rows.append
    add(Row("master params", shard * pb, "both", True, f"{m.param_dtype}, 1/{W} shard"))
    add(Row("gradients", shard * pb, "both", True, f"{m.param_dtype}, 1/{W} shard"))
    add(Row("optimizer (AdamW)", 2 * shard * pb, "both", True, "exp_avg + exp_avg_sq"))
    root, block = shape.units()
    if W > 1:
        gathered = 2 * (root + 2 * block) * cb
        add(Row("compute copy / gathers", gathered, "train", False, "root unit + 2 blocks, params + grads"))
    elif mixed:
        add(Row("compute copy / gathers", P * cb, "both", True, f"whole model in {m.compute_dtype}"))
    if g.kl_coef > 0:
        add(Row("reference model", shape.sharded_numel(W) * cb if W > 1 else P * cb, "both", True, "frozen"))
    seq = r.max_prompt_tokens + r.max_response_tokens
    kv_seq = seq * 2 * shape.layers * shape.kv_dim * cb  # one sequence's KV cache
    kv = r.max_batch_size * kv_seq
    if r.engine == "vllm" and plan.gpu_bytes:  # vLLM takes its share of the GPU for weights + KV cache
        u = r.vllm_gpu_memory_utilization
        pool = int(u * plan.gpu_bytes)
        how = f"rollout.vllm_gpu_memory_utilization={u} of the GPU; released while training"
        add(Row("vLLM pool (weights + KV cache)", pool, "rollout", True, how))
        if pool < P * cb + kv_seq:
            plan.problems.append(
                f"the vLLM pool ({pool / GiB:.1f} GiB) cannot hold the weights ({P * cb / GiB:.1f} GiB) and one "
                f"sequence's KV cache ({kv_seq / GiB:.2f} GiB): raise rollout.vllm_gpu_memory_utilization"
            )
        elif pool < P * cb + kv:
            batch = int((pool - P * cb) // kv_seq)
            row_how = f"{batch} of rollout.max_batch_size={r.max_batch_size} sequences fit at full length"
            add(Row("(vLLM sequences at once)", 0, "info", False, row_how))
    elif r.engine == "vllm":
        add(Row("rollout weights", P * cb, "rollout", True, "vLLM copy, released while training"))
        add(Row("KV cache", kv, "rollout", False, f"{r.max_batch_size} x {seq} tokens"))
    else:
        if W > 1:
            add(Row("rollout weights", P * cb, "both", True, "unsharded HF copy"))
        add(Row("KV cache", kv, "rollout", False, f"{r.max_batch_size} x {seq} tokens"))
    tokens = t.micro_batch_size * seq
    H, kvd, inter = shape.hidden, shape.kv_dim, shape.intermediate
    per_layer_token = cb * (6 * H + 2 * kvd + 4 * inter) + 4 * 2 * H  # + fp32 norm inputs
    full = shape.layers * per_layer_token * tokens
    ckpt = shape.layers * H * cb * tokens + 2 * per_layer_token * tokens
    how = f"{t.micro_batch_size} x {seq} tokens"
    if m.gradient_checkpointing:
        add(Row("activations", ckpt, "train", False, how + ", checkpointed"))
        add(Row("(activations without checkpointing)", full, "info", False, "not counted"))
    else:
        add(Row("activations", full, "train", False, how + ", no checkpointing"))
        add(Row("(activations with checkpointing)", ckpt, "info", False, "not counted"))
    chunk = min(g.logprob_chunk_tokens, tokens)
    add(
        Row(
            "log-prob chunk",
            chunk * shape.vocab * (cb + 8),
            "train",
            False,
            f"{chunk} x {shape.vocab} logits",
        )
    )
    return plan


class MemoryPlanError(ValueError):
    """The plan does not fit the GPU (its message names the components to change)."""


def check_before_train(
    cfg: Config, gpu_mem_gib: float | None = None, ignore: bool = False, print_fn: Any = print
) -> MemoryPlan | None:
    """`train`'s check at start: print the plan (main rank) and raise MemoryPlanError if it cannot fit, unless
    `ignore`. The world size is torchrun's; the GPU size is `gpu_mem_gib` or the local CUDA device's; on a
    machine without CUDA and without `gpu_mem_gib` there is nothing to check (returns None)."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if gpu_mem_gib is None:
        import torch

        if not torch.cuda.is_available():
            return None
        local = int(os.environ.get("LOCAL_RANK", "0"))
        gpu_mem_gib = torch.cuda.get_device_properties(local).total_memory / GiB
    plan = plan_memory(cfg, world, gpu_mem_gib)
    if int(os.environ.get("RANK", "0")) == 0:
        print_fn(plan.table())
    if plan.fits is False and not ignore:
        raise MemoryPlanError(
            f"the run needs about {plan.peak_bytes / GiB:.1f} GiB per GPU and has {gpu_mem_gib:.1f} GiB; change "
            + "; ".join(plan.advice())
            + " (or pass --ignore-memory-plan to start anyway)"
        )
    return plan
