"""The typed configuration tree: one dataclass per section, composed into `Config`.

Layer 1: no imports from the rest of the package, so every layer can take its own section from here.
Each section documents its fields; defaults are the paper's choices where the paper has one (see
docs/config.md for the mapping to the original training script's keys).

Loading (YAML + `a.b=c` overrides, unknown keys rejected, cross-field checks) lives in `config_io.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ProtocolConfig:
    """Turn and search limits. Paper defaults: 3 assistant turns, 2 searches, image search only in turn 1.

    The released script allowed 1 image search and 2 text searches; set max_text_searches=2 for that.
    `profile`: "default" (strict parsing, refusal turns, Unicode-aware matching) or "original" (the released
    code's turn rules, format score and answer normalisation; docs/protocol_and_reward.md lists every difference).
    """

    profile: str = "default"  # default | original
    max_turns: int = 3
    max_searches: int = 2
    max_image_searches: int = 1
    max_text_searches: int = 1
    image_search_first_turn_only: bool = True


@dataclass
class RewardConfig:
    """reward = (1 - format_weight) * acc * penalty + format_weight * format."""

    mode: str = "EM"  # "EM" or "SubEM"
    format_weight: float = 0.1
    search_penalty: float = 0.1  # penalty factor = 1 - search_penalty when correct and searched
    penalty_per_search: bool = False  # apply once per search instead of once per trajectory
    penalty_warmup_steps: int = 0  # ramp the penalty from penalty_warmup_start to search_penalty over W steps
    penalty_warmup_start: float = -0.1


@dataclass
class DataConfig:
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    # image pixel budget given to the image processor (None: the model directory's own preprocessor_config);
    # an image's tokens are at most max_pixels / 784 (28 x 28 pixels per token)
    min_pixels: int | None = None
    max_pixels: int | None = None
    skip_bad_rows: bool = False
    shuffle: bool = True


@dataclass
class ModelConfig:
    path: str = ""
    # master weights, gradients and optimizer state | forward/backward compute (rl/precision.py, docs/memory.md)
    param_dtype: str = "float32"  # float32 | bfloat16 | float16
    compute_dtype: str = (
        "float32"  # float32 | bfloat16 | float16; narrower than param_dtype = mixed precision
    )
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False


@dataclass
class SearchConfig:
    """Which backends serve the two tools. Each backend is `{"type": <registry name>, ...options}`."""

    top_k: int = 5
    text_backend: dict[str, Any] = field(default_factory=lambda: {"type": "local"})
    image_backend: dict[str, Any] = field(default_factory=lambda: {"type": "local"})
    cache_path: str | None = None
    timeout_s: float = 30.0
    max_concurrency: int = 8


@dataclass
class RolloutConfig:
    engine: str = "hf"  # hf | vllm
    n: int = 4  # rollouts per prompt (GRPO group size)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens_per_turn: int = 2048
    max_response_tokens: int = 8192  # total over all turns, tool turns included (released script)
    max_prompt_tokens: int = 4096
    max_images: int = 16  # question image + thumbnails
    prompt_set: str = "default"  # which prompt files under prompts/
    tool_workers: int = 16
    max_batch_size: int = 64  # generation batch cap for the engine
    schedule: str = "async"  # async (tools overlap generation) | round_sync (all generate, then all tools)
    min_turn_tokens: int = 8  # a tool turn is appended only if this many response tokens remain after it
    coalesce_s: float = 0.01  # async: tool results arriving within this gap of each other join one batch
    vllm_gpu_memory_utilization: float = (
        0.5  # engine=vllm: share of GPU memory it takes (CPU: of host memory)
    )
    hf_kv_reuse: bool = True  # engine=hf: keep each trajectory's KV between turns (prefill only new tokens)
    hf_kv_cache_gb: float = 4.0  # engine=hf: most KV kept between turns (LRU); beyond it, a turn prefills all


@dataclass
class GRPOConfig:
    """Objective: clipped policy loss on mask-1 tokens + kl_coef * low-variance KL to the reference."""

    adv_estimator: str = "grpo"  # grpo: (r - mean) / (std + eps); grpo_mean: r - mean
    adv_eps: float = 1e-6
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.001  # 0 disables the KL term and the reference model
    kl_kind: str = "low_var_kl"  # low_var_kl (k3, clamped to [-10, 10]) | k1
    entropy_coef: float = 0.0
    loss_agg: str = "token_mean"  # token_mean | seq_mean_token_mean
    ppo_epochs: int = 1
    dynamic_sampling: bool = False
    dynamic_sampling_max_rounds: int = 4
    logprob_chunk_tokens: int = 1024


@dataclass
class OptimConfig:
    lr: float = 2e-6
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8  # AdamW epsilon
    schedule: str = "constant"  # constant | cosine | sigmoid
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    sigmoid_center: int = 45
    sigmoid_ratio: float = 0.95
    grad_clip: float = 1.0


@dataclass
class TrainerConfig:
    run_dir: str = "runs/default"
    seed: int = 0
    total_steps: int = 50
    prompts_per_step: int = 32
    mini_batch_prompts: int = 32  # prompts per optimizer step
    micro_batch_size: int = 4  # trajectories per forward/backward
    val_every: int = 10
    val_before_train: bool = True
    val_only: bool = (
        False  # evaluate the starting policy on data.val_files, save every generation, no training
    )
    val_only_save_dir: str = ""  # where val_only writes its generations ("" = RUN_DIR/val_only)
    save_every: int = 10
    keep_last: int = 2
    log_tensorboard: bool = False
    log_wandb: bool = False
    wandb_project: str = "mmsearch-r1"
    traces_per_step: int = 4


@dataclass
class SFTConfig:
    """Supervised warm start (`mmsearch-r1 sft`, docs/sft.md) on conversations JSONL/parquet.

    Uses `model.*` for the starting model, `optim.*` for everything but the lr (betas, weight decay, schedule,
    warm-up, grad clipping) and `trainer.seed` / `trainer.keep_last`. One step = `batch_size` conversations,
    split into micro-batches of `micro_batch_size` (padded per micro-batch, gradients accumulated).
    """

    train_files: list[str] = field(default_factory=list)
    run_dir: str = "runs/sft"
    epochs: int = 1
    max_steps: int = 0  # > 0: stop after this many optimizer steps (data repeats as needed)
    batch_size: int = 8  # conversations per optimizer step
    micro_batch_size: int = 4  # conversations per forward/backward
    lr: float = 1e-5
    max_length: int = (
        4096  # tokens; longer conversations are cut after the last whole assistant turn that fits
    )
    shuffle: bool = True
    save_every: int = 0  # checkpoint every N steps (0: only at the end)
    log_every: int = 1
    export_dir: str = ""  # final HF model directory ("" = RUN_DIR/final)


@dataclass
class Config:
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
