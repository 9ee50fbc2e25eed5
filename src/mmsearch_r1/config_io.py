"""Load, check and save the typed configuration tree of `config.py`.

`load_config(path, overrides)`: start from the dataclass defaults, merge the YAML file (if any), then apply
`a.b=c` overrides in order (values parsed as YAML, so `n=8`, `lr=2e-6`, `files=[a,b]`, `flag=false` work; a
leading `+` on the key is stripped). Every key is checked: an unknown key is rejected with the list of keys known
at that level, and every value must match its field's type (int, float, bool, str, list, dict, tuple, Optional).
A dict-typed field (e.g. `search.text_backend`) is replaced as a whole by a YAML mapping, while an override that
goes into it (`search.text_backend.type=bm25`) sets one key. Then `validate` runs the cross-field checks.

Launch lines of the original veRL-based training script are accepted: `LEGACY_KEYS` (in `config_legacy.py`,
re-exported here) maps each of its keys to ours (with a warning per key), marks some as accepted no-ops (with a
note) and rejects the ones whose value would change the run with a clear error. docs/config.md's table is
generated from it (`legacy_table_markdown`).

Layer 1: imports neither torch nor the rest of the package beyond `config`.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from mmsearch_r1.config import Config
from mmsearch_r1.config_legacy import LEGACY_KEYS, UNSUPPORTED_PREFIXES, Legacy, legacy_table_markdown

__all__ = [
    "LEGACY_KEYS",
    "UNSUPPORTED_PREFIXES",
    "ConfigError",
    "Legacy",
    "config_to_dict",
    "legacy_table_markdown",
    "load_config",
    "parse_override",
    "save_config",
    "validate",
]

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration that cannot be loaded: unknown key, wrong type or inconsistent values."""


ENUMS: dict[str, tuple[str, ...]] = {
    "reward.mode": ("EM", "SubEM"),
    "protocol.profile": ("default", "original"),
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
        _assign_legacy(cfg, key, rule, value, source)
        return
    for prefix, why in UNSUPPORTED_PREFIXES.items():
        if key.startswith(prefix):
            raise ConfigError(f"{key} ({source}) is not supported: {why}")
    _set_path(cfg, key, value)


def _assign_legacy(cfg: Config, key: str, rule: Legacy, value: Any, source: str) -> None:
    if rule.only:
        if value not in rule.only or isinstance(value, bool) != isinstance(rule.only[0], bool):
            raise ConfigError(f"{key} ({source}): the value {value!r} is not supported: {rule.error}")
    elif rule.error:
        raise ConfigError(f"{key} ({source}) is not supported: {rule.error}")
    if not rule.targets:
        logger.warning("config: %s (%s) accepted and ignored: %s", key, source, rule.note)
        return
    try:
        v = rule.convert(value) if rule.convert else value
    except ValueError as e:
        raise ConfigError(f"{key}={value!r} ({source}): {e}") from None
    values = v if isinstance(v, dict) and set(v) == set(rule.targets) else dict.fromkeys(rule.targets, v)
    for target, tv in values.items():
        if target != key:
            logger.warning("config: legacy key %s (%s) mapped to %s", key, source, target)
        _set_path(cfg, target, tv, lenient_list=True)
    if rule.after is not None:
        note = rule.after(cfg)
        if note:
            logger.warning("config: legacy key %s (%s): %s", key, source, note)


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
    t, r, g, o = d["trainer"], d["rollout"], d["grpo"], d["optim"]
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
    errs += reward_protocol_errors(d["reward"], d["protocol"])
    from mmsearch_r1.search.secrets import REDACTED, find_redacted

    for where in find_redacted(d):
        errs.append(
            f"{where} is {REDACTED!r}: secrets are removed when a config is saved; give the key through "
            "the environment (api_key_env / token_env)"
        )
    if errs:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errs))


def reward_protocol_errors(reward: dict[str, Any], protocol: dict[str, Any]) -> list[str]:
    """Range checks of every reward and protocol number (also used by `reward score`); [] when all hold.

    search_penalty p in [0, 1] (the factor 1 - p stays in [0, 1]); penalty_warmup_start in [-1, 1] (a bonus of
    at most 2x during the warm-up); format_weight in [0, 1]; turn and search limits non-negative integers."""
    errs: list[str] = []

    def rng(section: str, d: dict[str, Any], key: str, lo: float, hi: float) -> None:
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            errs.append(f"{section}.{key}={v!r} must be a number in [{lo:g}, {hi:g}]")

    rng("reward", reward, "format_weight", 0, 1)
    rng("reward", reward, "search_penalty", 0, 1)
    rng("reward", reward, "penalty_warmup_start", -1, 1)
    for key, lo in (("penalty_warmup_steps", 0),):
        if isinstance(reward[key], bool) or not isinstance(reward[key], int) or reward[key] < lo:
            errs.append(f"reward.{key}={reward[key]!r} must be an integer >= {lo}")
    for key, lo in (
        ("max_turns", 1),
        ("max_searches", 0),
        ("max_image_searches", 0),
        ("max_text_searches", 0),
    ):
        v = protocol[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            errs.append(f"protocol.{key}={v!r} must be an integer >= {lo}")
    return errs


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
    """Write the resolved config as YAML, secrets redacted (`search.secrets.redact_secrets`), atomically.

    It loads back to an equal Config when it held no secret; a redacted key is refused at load."""
    from mmsearch_r1.search.secrets import redact_secrets

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(redact_secrets(config_to_dict(cfg)), sort_keys=False, default_flow_style=False)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text("# resolved mmsearch-r1 config\n" + text, encoding="utf-8")
    tmp.replace(p)
    return p
