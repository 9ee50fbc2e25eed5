"""Load, check and save the typed configuration tree of `config.py`.

`load_config(path, overrides)`: start from the dataclass defaults, merge the YAML file (if any), then apply
`a.b=c` overrides in order (values parsed as YAML, so `n=8`, `lr=2e-6`, `files=[a,b]`, `flag=false` work; a
leading `+` on the key is stripped). Every key is checked: an unknown key is rejected with the list of keys known
at that level, and every value must match its field's type (int, float, bool, str, list, dict, tuple, Optional).
A dict-typed field (e.g. `search.text_backend`) is replaced as a whole by a YAML mapping, while an override that
goes into it (`search.text_backend.type=bm25`) sets one key. Then `validate` runs the cross-field checks.

Launch lines of the original veRL-based training script are accepted: `LEGACY_KEYS` maps each of its keys to
ours (with a warning per key), marks some as accepted no-ops (with a note) and rejects the ones we do not support
with a clear error. docs/config.md documents the table.

Layer 1: imports neither torch nor the rest of the package beyond `config`.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mmsearch_r1.config import Config

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration that cannot be loaded: unknown key, wrong type or inconsistent values."""


@dataclasses.dataclass(frozen=True)
class Legacy:
    """How one key of the original script is handled: mapped to `targets`, a no-op (`note`), or an `error`."""

    targets: tuple[str, ...] = ()
    note: str = ""
    error: str = ""
    convert: Callable[[Any], Any] | None = None


def _verl_agg(v: Any) -> Any:
    return v.replace("-", "_") if isinstance(v, str) else v


def _verl_top_k(v: Any) -> Any:
    return 0 if v == -1 else v


_A, _R = "actor_rollout_ref.actor.", "actor_rollout_ref.rollout."
_NO_TP = "tensor/sequence parallelism is not supported: models are sharded with FSDP over the torchrun world"

# The original script's keys (without a leading "+"), in one table.
LEGACY_KEYS: dict[str, Legacy] = {
    "data.train_batch_size": Legacy(("trainer.prompts_per_step",)),
    "data.max_prompt_length": Legacy(("rollout.max_prompt_tokens",)),
    "data.max_response_length": Legacy(("rollout.max_new_tokens_per_turn",)),
    "data.train_files": Legacy(("data.train_files",)),
    "data.val_files": Legacy(("data.val_files",)),
    "data.val_batch_size": Legacy(note="evaluation batches are capped by rollout.max_batch_size"),
    "data.image_key": Legacy(note="images are always read from the `images` column"),
    "algorithm.adv_estimator": Legacy(("grpo.adv_estimator",)),
    "algorithm.kl_ctrl.kl_coef": Legacy(note="KL is a loss term here; its weight is grpo.kl_coef"),
    "algorithm.use_kl_in_reward": Legacy(note="KL is a loss term here, never part of the reward"),
    "actor_rollout_ref.model.path": Legacy(("model.path",)),
    "actor_rollout_ref.model.enable_gradient_checkpointing": Legacy(("model.gradient_checkpointing",)),
    "actor_rollout_ref.model.use_remove_padding": Legacy(note="padding handling is internal"),
    _A + "optim.lr": Legacy(("optim.lr",)),
    _A + "optim.weight_decay": Legacy(("optim.weight_decay",)),
    _A + "ppo_mini_batch_size": Legacy(("trainer.mini_batch_prompts",)),
    _A + "ppo_micro_batch_size_per_gpu": Legacy(("trainer.micro_batch_size",)),
    _A + "ppo_epochs": Legacy(("grpo.ppo_epochs",)),
    _A + "kl_loss_coef": Legacy(("grpo.kl_coef",)),
    _A + "kl_loss_type": Legacy(("grpo.kl_kind",)),
    _A + "use_kl_loss": Legacy(note="KL is a loss term whenever grpo.kl_coef > 0 (set it to 0 to disable)"),
    _A + "clip_ratio": Legacy(("grpo.clip_low", "grpo.clip_high")),
    _A + "clip_ratio_low": Legacy(("grpo.clip_low",)),
    _A + "clip_ratio_high": Legacy(("grpo.clip_high",)),
    _A + "entropy_coeff": Legacy(("grpo.entropy_coef",)),
    _A + "loss_agg_mode": Legacy(("grpo.loss_agg",), convert=_verl_agg),
    _A + "grad_clip": Legacy(("optim.grad_clip",)),
    _A + "use_dynamic_bsz": Legacy(note="micro-batches are sized by trainer.micro_batch_size"),
    _A + "ppo_max_token_len_per_gpu": Legacy(note="micro-batches are sized by trainer.micro_batch_size"),
    _A + "fsdp_config.param_offload": Legacy(note="parameter offload is not implemented; ignored"),
    _A + "fsdp_config.optimizer_offload": Legacy(note="optimizer offload is not implemented; ignored"),
    _A + "ulysses_sequence_parallel_size": Legacy(error=_NO_TP),
    _R + "n": Legacy(("rollout.n",)),
    _R + "temperature": Legacy(("rollout.temperature",)),
    _R + "top_p": Legacy(("rollout.top_p",)),
    _R + "top_k": Legacy(("rollout.top_k",), convert=_verl_top_k),
    _R + "max_gen_round": Legacy(("protocol.max_turns",)),
    _R + "response_length_total": Legacy(("rollout.max_response_tokens",)),
    _R + "name": Legacy(note="the generation engine is chosen by rollout.engine (hf | vllm)"),
    _R + "use_multi_turn_response_mask": Legacy(note="tool-turn tokens are always masked out of the loss"),
    _R + "gpu_memory_utilization": Legacy(note="engine memory options are not configurable here; ignored"),
    _R + "log_prob_micro_batch_size_per_gpu": Legacy(note="log-probs use trainer.micro_batch_size"),
    _R + "tensor_model_parallel_size": Legacy(error=_NO_TP),
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": Legacy(
        note="log-probs use trainer.micro_batch_size"
    ),
    "actor_rollout_ref.ref.fsdp_config.param_offload": Legacy(
        note="parameter offload is not implemented; ignored"
    ),
    "trainer.total_training_steps": Legacy(("trainer.total_steps",)),
    "trainer.total_epochs": Legacy(note="training length is trainer.total_steps"),
    "trainer.test_freq": Legacy(("trainer.val_every",)),
    "trainer.save_freq": Legacy(("trainer.save_every",)),
    "trainer.default_local_dir": Legacy(("trainer.run_dir",)),
    "trainer.project_name": Legacy(("trainer.wandb_project",)),
    "trainer.experiment_name": Legacy(note="the run is named by trainer.run_dir"),
    "trainer.logger": Legacy(note="use trainer.log_tensorboard / trainer.log_wandb (JSONL is always on)"),
    "trainer.n_gpus_per_node": Legacy(note="the world size comes from torchrun"),
    "trainer.nnodes": Legacy(note="the world size comes from torchrun"),
    "trainer.critic_warmup": Legacy(note="GRPO has no critic"),
    "trainer.search_penalty": Legacy(("reward.search_penalty",)),
    # this project's own renamed keys
    "model.dtype": Legacy(("model.param_dtype", "model.compute_dtype")),
    "model.trust_remote_code": Legacy(note="only the built-in Qwen-VL classes are loaded; no remote code runs"),
}
UNSUPPORTED_PREFIXES: dict[str, str] = {
    "critic.": "GRPO has no critic model",
    "reward_model.": "rewards are rule-based",
}

ENUMS: dict[str, tuple[str, ...]] = {
    "reward.mode": ("EM", "SubEM"),
    "optim.schedule": ("constant", "cosine", "sigmoid"),
    "grpo.loss_agg": ("token_mean", "seq_mean_token_mean"),
    "grpo.adv_estimator": ("grpo", "grpo_mean"),
    "grpo.kl_kind": ("low_var_kl", "k1"),
    "model.param_dtype": ("float32", "bfloat16", "float16"),
    "model.compute_dtype": ("float32", "bfloat16", "float16"),
    "rollout.engine": ("hf", "vllm"),
}


# ----------------------------------------------------------------------------------------------------------
# Types
# ----------------------------------------------------------------------------------------------------------
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) if not typing.get_args(tp) else str(tp).replace("typing.", "")  # type: ignore[return-value]


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp` and return it in the field's own type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = ConfigError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, path)
            except ConfigError:
                continue
        raise bad
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "2e-6" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(v, args[0] if args else Any, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if args and len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=False)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, path): _coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    raise ConfigError(f"{path}: field type {tp!r} is not supported by the loader")


# ----------------------------------------------------------------------------------------------------------
# Setting one dotted key
# ----------------------------------------------------------------------------------------------------------
def _set_path(cfg: Config, key: str, value: Any, lenient_list: bool = False) -> None:
    parts = key.split(".")
    obj: Any = cfg
    for i, part in enumerate(parts):
        here = ".".join(parts[:i]) or "top level"
        path = ".".join(parts[: i + 1])
        if not dataclasses.is_dataclass(obj):
            raise ConfigError(f"{path}: {here} is not a section")
        hints = _hints(type(obj))
        if part not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(obj))
            raise ConfigError(f"unknown key {part!r} in {here} ({key}); known keys: {known}")
        tp = hints[part]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(obj, part)):
                if not isinstance(value, dict):
                    raise ConfigError(f"{path}: is a section; expected a mapping, got {value!r}")
                for k, v in value.items():
                    _set_path(cfg, f"{path}.{k}", v)
                return
            if lenient_list and isinstance(value, str) and typing.get_origin(tp) is list:
                value = [value]
            setattr(obj, part, _coerce(value, tp, path))
            return
        child = getattr(obj, part)
        if isinstance(child, dict) and not dataclasses.is_dataclass(child):
            node = child
            for sub in parts[i + 1 : -1]:
                node = node.setdefault(sub, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{key}: {sub} is not a mapping")
            node[parts[-1]] = value
            return
        obj = child


def _assign(cfg: Config, key: str, value: Any, source: str) -> None:
    key = key.lstrip("+")
    rule = LEGACY_KEYS.get(key)
    if rule is not None:
        if rule.error:
            raise ConfigError(f"{key} ({source}) is not supported: {rule.error}")
        if not rule.targets:
            logger.warning("config: %s (%s) accepted and ignored: %s", key, source, rule.note)
            return
        v = rule.convert(value) if rule.convert else value
        for target in rule.targets:
            if target != key:
                logger.warning("config: legacy key %s (%s) mapped to %s", key, source, target)
            _set_path(cfg, target, v, lenient_list=True)
        return
    for prefix, why in UNSUPPORTED_PREFIXES.items():
        if key.startswith(prefix):
            raise ConfigError(f"{key} ({source}) is not supported: {why}")
    _set_path(cfg, key, value)


def _flatten(node: dict[str, Any], prefix: str, cls: type | None) -> list[tuple[str, Any]]:
    """YAML mapping -> dotted (key, value) pairs; stops at leaves, dict-typed fields and legacy keys."""
    out: list[tuple[str, Any]] = []
    hints = _hints(cls) if cls is not None else {}
    for k, v in node.items():
        if not isinstance(k, str):
            raise ConfigError(f"{prefix or 'top level'}: keys must be strings, got {k!r}")
        path = prefix + k.lstrip("+")
        tp = hints.get(k.lstrip("+"))
        if isinstance(v, dict) and tp is not None and dataclasses.is_dataclass(tp):
            out += _flatten(v, path + ".", tp)
        elif isinstance(v, dict) and tp is None and path not in LEGACY_KEYS:
            out += _flatten(v, path + ".", None)
        else:
            out.append((path, v))
    return out


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------
def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=c` -> ("a.b", YAML value of c). An empty value is the empty string."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from None
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file <- overrides, then type and cross-field checks. Raises ConfigError."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
        for key, value in _flatten(data, "", Config):
            _assign(cfg, key, value, str(p))
    for item in overrides:
        key, value = parse_override(item)
        _assign(cfg, key, value, "override")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks; raises one ConfigError listing every problem found."""
    d = config_to_dict(cfg)
    errs: list[str] = []

    def get(key: str) -> Any:
        section, name = key.split(".")
        return d[section][name]

    def need(ok: bool, msg: str) -> None:
        if not ok:
            errs.append(msg)

    for key, allowed in ENUMS.items():
        need(get(key) in allowed, f"{key}={get(key)!r} must be one of {list(allowed)}")
    t, r, g, o, p = d["trainer"], d["rollout"], d["grpo"], d["optim"], d["protocol"]
    need(r["n"] >= 1, f"rollout.n={r['n']} must be >= 1")
    need(t["prompts_per_step"] >= 1, "trainer.prompts_per_step must be >= 1")
    need(t["mini_batch_prompts"] >= 1, "trainer.mini_batch_prompts must be >= 1")
    if t["prompts_per_step"] >= 1 and t["mini_batch_prompts"] >= 1:
        need(
            t["prompts_per_step"] % t["mini_batch_prompts"] == 0,
            f"trainer.prompts_per_step={t['prompts_per_step']} must be divisible by "
            f"trainer.mini_batch_prompts={t['mini_batch_prompts']}",
        )
    need(t["micro_batch_size"] >= 1, "trainer.micro_batch_size must be >= 1")
    need(t["total_steps"] >= 0, "trainer.total_steps must be >= 0")
    for k in ("max_new_tokens_per_turn", "max_response_tokens", "max_prompt_tokens", "max_batch_size"):
        need(r[k] >= 1, f"rollout.{k}={r[k]} must be >= 1")
    need(
        r["max_new_tokens_per_turn"] <= r["max_response_tokens"],
        f"rollout.max_new_tokens_per_turn={r['max_new_tokens_per_turn']} must be <= "
        f"rollout.max_response_tokens={r['max_response_tokens']}",
    )
    need(r["temperature"] >= 0, "rollout.temperature must be >= 0")
    need(0 < r["top_p"] <= 1, f"rollout.top_p={r['top_p']} must be in (0, 1]")
    need(r["top_k"] >= 0, "rollout.top_k must be >= 0 (0 = off)")
    need(0 <= g["clip_low"] < 1, f"grpo.clip_low={g['clip_low']} must be in [0, 1)")
    need(g["clip_high"] >= 0, f"grpo.clip_high={g['clip_high']} must be >= 0")
    need(g["kl_coef"] >= 0, "grpo.kl_coef must be >= 0")
    need(g["adv_eps"] > 0, "grpo.adv_eps must be > 0")
    need(g["ppo_epochs"] >= 1, "grpo.ppo_epochs must be >= 1")
    need(g["dynamic_sampling_max_rounds"] >= 1, "grpo.dynamic_sampling_max_rounds must be >= 1")
    need(g["logprob_chunk_tokens"] >= 1, "grpo.logprob_chunk_tokens must be >= 1")
    need(o["lr"] > 0, "optim.lr must be > 0")
    need(o["warmup_steps"] >= 0, "optim.warmup_steps must be >= 0")
    need(0 <= o["min_lr_ratio"] <= 1, "optim.min_lr_ratio must be in [0, 1]")
    need(0 <= o["sigmoid_ratio"] <= 1, "optim.sigmoid_ratio must be in [0, 1]")
    need(o["sigmoid_center"] > 0, "optim.sigmoid_center must be > 0")
    need(o["grad_clip"] >= 0, "optim.grad_clip must be >= 0 (0 = off)")
    need(p["max_turns"] >= 1, "protocol.max_turns must be >= 1")
    need(p["max_searches"] >= 0, "protocol.max_searches must be >= 0")
    need(0 <= d["reward"]["format_weight"] <= 1, "reward.format_weight must be in [0, 1]")
    pd, cd = d["model"]["param_dtype"], d["model"]["compute_dtype"]
    need(
        pd == cd or pd == "float32",
        f"model.param_dtype={pd!r} with model.compute_dtype={cd!r}: the master weights must be float32 or the "
        "compute dtype itself (a narrower master than compute loses every update the compute could see)",
    )
    need(
        not (pd == "float32" and cd == "float16"),
        "model.compute_dtype='float16' with a float32 master needs loss scaling, which is not implemented: "
        "use bfloat16",
    )
    lo, hi = d["data"]["min_pixels"], d["data"]["max_pixels"]
    need(lo is None or lo > 0, f"data.min_pixels={lo} must be > 0 (or null: the model's own)")
    need(hi is None or hi > 0, f"data.max_pixels={hi} must be > 0 (or null: the model's own)")
    if lo is not None and hi is not None:
        need(lo <= hi, f"data.min_pixels={lo} must be <= data.max_pixels={hi}")
    if errs:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errs))


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain YAML-safe data (tuples become lists)."""

    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return plain(dataclasses.asdict(cfg))


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (loads back to an equal Config)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
    p.write_text("# resolved mmsearch-r1 config\n" + text, encoding="utf-8")
    return p
