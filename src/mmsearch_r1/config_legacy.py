"""The keys of the original veRL-based launch script and how each is handled here (one table, `LEGACY_KEYS`).

Every key is one of:
- mapped: its value (converted where the spelling differs) goes to `targets`, with one warning line;
- accepted and ignored: one warning line with `note` saying why; with `only`, only those values are accepted
  (another value would change the run, so it is an error naming what to use instead);
- refused (`error`): accepting it would change the run without saying so; the error says what to use.

`legacy_table_markdown()` writes the table of docs/config.md (a test checks the two agree).
Layer 1: no imports from the rest of the package beyond `config`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from mmsearch_r1.config import Config


@dataclasses.dataclass(frozen=True)
class Legacy:
    """How one key of the original script is handled: mapped to `targets`, a no-op (`note`), or an `error`."""

    targets: tuple[str, ...] = ()
    note: str = ""
    error: str = ""
    convert: Callable[[Any], Any] | None = None
    only: tuple[Any, ...] = ()  # a no-op only for these values; any other value is the `error`
    after: Callable[[Config], str] | None = (
        None  # runs once the targets are set; returns a warning line or ""
    )
    doc: str = ""  # how a mapped value is converted (docs table)


def _verl_agg(v: Any) -> Any:
    return v.replace("-", "_") if isinstance(v, str) else v


def _verl_top_k(v: Any) -> Any:
    return 0 if v == -1 else v


def _sigmoid_switch(v: Any) -> Any:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return "sigmoid" if v else "constant"


def _engine_name(v: Any) -> Any:
    if isinstance(v, str) and v.startswith("vllm"):
        return "vllm"
    if v == "hf":
        return "hf"
    raise ValueError(f"no engine matches {v!r}: set rollout.engine to hf or vllm")


def _log_to_wandb(v: Any) -> Any:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise ValueError(f"expected a list of logger names, got {v!r}")
    unknown = [x for x in items if x not in ("console", "wandb", "tensorboard")]
    if unknown:
        raise ValueError(f"unknown loggers {unknown}: use console, wandb or tensorboard")
    return {"trainer.log_wandb": "wandb" in items, "trainer.log_tensorboard": "tensorboard" in items}


def _searches_total(cfg: Config) -> str:
    p = cfg.protocol
    total = p.max_image_searches + p.max_text_searches
    if p.max_searches == total:
        return ""
    p.max_searches = total
    return f"protocol.max_searches set to {total} (the original has per-kind limits only)"


_A, _R, _S = "actor_rollout_ref.actor.", "actor_rollout_ref.rollout.", "actor_rollout_ref.rollout.search."
_NO_TP = "tensor/sequence parallelism is not supported: models are sharded with FSDP over the torchrun world"
_TP_ONE = "one unsplit model copy per process, which is what a parallel size of 1 means"
_PROMPTS = (
    "prompt files are a prompt set here: convert the three pickles once with "
    "`mmsearch-r1 prompts import-original DIR OUT` and set rollout.prompt_set=OUT"
)
_ENGINE_OPT = "vLLM engine tuning option with no effect on results; ignored"
_OFFLOAD = "offload is not implemented; ignored (memory use only)"
_LOGPROB_MB = "log-probs use trainer.micro_batch_size"

# The original script's keys (without a leading "+"), in one table.
LEGACY_KEYS: dict[str, Legacy] = {
    "data.train_batch_size": Legacy(("trainer.prompts_per_step",)),
    "data.max_prompt_length": Legacy(("rollout.max_prompt_tokens",)),
    "data.max_response_length": Legacy(("rollout.max_new_tokens_per_turn",)),
    "data.train_files": Legacy(("data.train_files",), doc="same name; a single path string is accepted"),
    "data.val_files": Legacy(("data.val_files",), doc="same name; a single path string is accepted"),
    "data.val_batch_size": Legacy(note="evaluation batches are capped by rollout.max_batch_size"),
    "data.image_key": Legacy(
        note="images are always read from the `images` column",
        only=("images",),
        error="images are always read from the `images` column; rename the column in your data",
    ),
    "data.user_prompt_round_1": Legacy(note=_PROMPTS),
    "data.user_prompt_after_image_search": Legacy(note=_PROMPTS),
    "data.user_prompt_after_text_search": Legacy(note=_PROMPTS),
    "algorithm.adv_estimator": Legacy(("grpo.adv_estimator",)),
    "algorithm.kl_ctrl.kl_coef": Legacy(note="KL is a loss term here; its weight is grpo.kl_coef"),
    "algorithm.use_kl_in_reward": Legacy(note="KL is a loss term here, never part of the reward"),
    "algorithm.filter_groups.enable": Legacy(("grpo.dynamic_sampling",)),
    "actor_rollout_ref.model.path": Legacy(("model.path",)),
    "actor_rollout_ref.model.enable_gradient_checkpointing": Legacy(("model.gradient_checkpointing",)),
    "actor_rollout_ref.model.use_remove_padding": Legacy(note="padding handling is internal"),
    _A + "optim.lr": Legacy(("optim.lr",)),
    _A + "optim.weight_decay": Legacy(("optim.weight_decay",)),
    _A + "optim.lr_sigmoid_decay_warmup": Legacy(
        ("optim.schedule",), convert=_sigmoid_switch, doc="True -> `sigmoid`, False -> `constant`"
    ),
    _A + "optim.lr_sigmoid_decay_ratio": Legacy(("optim.sigmoid_ratio",)),
    _A + "optim.lr_sigmoid_decay_warmup_steps": Legacy(("optim.sigmoid_center",)),
    _A + "ppo_mini_batch_size": Legacy(("trainer.mini_batch_prompts",)),
    _A + "ppo_micro_batch_size_per_gpu": Legacy(("trainer.micro_batch_size",)),
    _A + "ppo_epochs": Legacy(("grpo.ppo_epochs",)),
    _A + "kl_loss_coef": Legacy(("grpo.kl_coef",)),
    _A + "kl_loss_type": Legacy(("grpo.kl_kind",)),
    _A + "use_kl_loss": Legacy(
        note="KL is a loss term whenever grpo.kl_coef > 0",
        only=(True,),
        error="KL is a loss term whenever grpo.kl_coef > 0: set grpo.kl_coef=0 to train without it",
    ),
    _A + "clip_ratio": Legacy(("grpo.clip_low", "grpo.clip_high")),
    _A + "clip_ratio_low": Legacy(("grpo.clip_low",)),
    _A + "clip_ratio_high": Legacy(("grpo.clip_high",)),
    _A + "entropy_coeff": Legacy(("grpo.entropy_coef",)),
    _A + "loss_agg_mode": Legacy(
        ("grpo.loss_agg",), convert=_verl_agg, doc="`token-mean` -> `token_mean` (dashes become underscores)"
    ),
    _A + "grad_clip": Legacy(("optim.grad_clip",)),
    _A + "use_dynamic_bsz": Legacy(note="micro-batches are sized by trainer.micro_batch_size"),
    _A + "ppo_max_token_len_per_gpu": Legacy(note="micro-batches are sized by trainer.micro_batch_size"),
    _A + "use_multi_turn_response_mask": Legacy(
        note="tool-turn tokens are always masked out of the loss",
        only=(True,),
        error="tool-turn tokens are always masked out of the loss; training on them is not supported",
    ),
    _A + "fsdp_config.param_offload": Legacy(note=_OFFLOAD),
    _A + "fsdp_config.optimizer_offload": Legacy(note=_OFFLOAD),
    _A + "ulysses_sequence_parallel_size": Legacy(note=_TP_ONE, only=(1,), error=_NO_TP),
    _R + "n": Legacy(("rollout.n",)),
    _R + "temperature": Legacy(("rollout.temperature",)),
    _R + "top_p": Legacy(("rollout.top_p",)),
    _R + "top_k": Legacy(("rollout.top_k",), convert=_verl_top_k, doc="-1 (off) -> 0 (off)"),
    _R + "max_gen_round": Legacy(("protocol.max_turns",)),
    _R + "response_length_total": Legacy(("rollout.max_response_tokens",)),
    _R + "name": Legacy(
        ("rollout.engine",), convert=_engine_name, doc="`vllm...` -> `vllm`, `hf` -> `hf`; others: error"
    ),
    _R + "use_multi_turn_response_mask": Legacy(
        note="tool-turn tokens are always masked out of the loss",
        only=(True,),
        error="tool-turn tokens are always masked out of the loss; training on them is not supported",
    ),
    _R + "gpu_memory_utilization": Legacy(("rollout.vllm_gpu_memory_utilization",)),
    _R + "enable_chunked_prefill": Legacy(note=_ENGINE_OPT),
    _R + "enforce_eager": Legacy(note=_ENGINE_OPT),
    _R + "free_cache_engine": Legacy(note=_ENGINE_OPT),
    _R + "log_prob_micro_batch_size_per_gpu": Legacy(note=_LOGPROB_MB),
    _R + "tensor_model_parallel_size": Legacy(note=_TP_ONE, only=(1,), error=_NO_TP),
    _S + "topk": Legacy(("search.top_k",)),
    _S + "image_search_limit": Legacy(
        ("protocol.max_image_searches",),
        after=_searches_total,
        doc="protocol.max_searches becomes the sum of the two per-kind limits",
    ),
    _S + "text_search_limit": Legacy(
        ("protocol.max_text_searches",),
        after=_searches_total,
        doc="protocol.max_searches becomes the sum of the two per-kind limits",
    ),
    _S + "parallel_tool_call": Legacy(
        note="tool calls always run in a thread pool (results do not depend on it)"
    ),
    _S + "parallel_tool_call_threads": Legacy(("rollout.tool_workers",)),
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": Legacy(note=_LOGPROB_MB),
    "actor_rollout_ref.ref.fsdp_config.param_offload": Legacy(note=_OFFLOAD),
    "trainer.total_training_steps": Legacy(("trainer.total_steps",)),
    "trainer.total_epochs": Legacy(
        note="training length is trainer.total_steps (epochs x train rows / prompts_per_step); set it"
    ),
    "trainer.test_freq": Legacy(("trainer.val_every",)),
    "trainer.save_freq": Legacy(("trainer.save_every",)),
    "trainer.default_local_dir": Legacy(("trainer.run_dir",)),
    "trainer.project_name": Legacy(("trainer.wandb_project",)),
    "trainer.experiment_name": Legacy(note="the run is named by trainer.run_dir"),
    "trainer.logger": Legacy(
        ("trainer.log_wandb", "trainer.log_tensorboard"),
        convert=_log_to_wandb,
        doc="`wandb` / `tensorboard` in the list switch those loggers on (JSONL and console are always on)",
    ),
    "trainer.n_gpus_per_node": Legacy(note="the world size comes from torchrun"),
    "trainer.nnodes": Legacy(note="the world size comes from torchrun"),
    "trainer.critic_warmup": Legacy(note="GRPO has no critic", only=(0,), error="GRPO has no critic"),
    "trainer.search_penalty": Legacy(("reward.search_penalty",)),
    "trainer.format_penalty": Legacy(("reward.format_weight",)),
    "trainer.reward_mode": Legacy(("reward.mode",)),
    "trainer.use_search_count_penalty": Legacy(("reward.penalty_per_search",)),
    "trainer.search_penalty_warmup_steps": Legacy(("reward.penalty_warmup_steps",)),
    # this project's own former keys
    "model.dtype": Legacy(
        ("model.param_dtype", "model.compute_dtype"),
        doc="this project's former key: sets both (docs/memory.md)",
    ),
    "model.trust_remote_code": Legacy(
        note="only the built-in Qwen-VL classes are loaded; no remote code runs"
    ),
}
UNSUPPORTED_PREFIXES: dict[str, str] = {
    "critic.": "GRPO has no critic model",
    "reward_model.": "rewards are rule-based",
}


def legacy_table_markdown() -> str:
    """The docs/config.md table of `LEGACY_KEYS` and `UNSUPPORTED_PREFIXES` (one row per key)."""
    rows = ["| original key | here | note |", "|---|---|---|"]
    for key, rule in LEGACY_KEYS.items():
        if rule.targets:
            here, note = ", ".join(f"`{t}`" for t in rule.targets), rule.doc
        elif rule.only:
            values = ", ".join(f"`{v}`" for v in rule.only)
            here, note = f"ignored when {values}", f"{rule.note}; other values: error ({rule.error})"
        elif rule.error:
            here, note = "**error**", rule.error
        else:
            here, note = "ignored", rule.note
        rows.append(f"| `{key}` | {here} | {note.replace('|', '/')} |")
    for prefix, why in UNSUPPORTED_PREFIXES.items():
        rows.append(f"| `{prefix}*` | **error** | {why} |")
    return "\n".join(rows) + "\n"
