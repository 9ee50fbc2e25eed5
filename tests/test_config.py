"""Config loading: YAML + overrides, type and key checks, cross-field checks, legacy keys, round trip."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from mmsearch_r1.config import Config
from mmsearch_r1.config_io import LEGACY_KEYS, ConfigError, config_to_dict, load_config, save_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_round_trips(path: Path, tmp_path: Path) -> None:
    cfg = load_config(str(path), [])
    out = save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(out, []) == cfg


def test_shipped_recipes_hold_the_papers_numbers() -> None:
    names = {p.name for p in CONFIGS}
    assert {"smoke_cpu.yaml", "paper_qwen25vl7b_fvqa.yaml", "released_single_node.yaml"} <= names
    paper = load_config(str(CONFIGS[0].parent / "paper_qwen25vl7b_fvqa.yaml"))
    assert (paper.trainer.prompts_per_step, paper.trainer.mini_batch_prompts, paper.rollout.n) == (
        512,
        128,
        8,
    )
    assert (paper.optim.lr, paper.grpo.kl_coef, paper.grpo.kl_kind) == (2e-6, 0.001, "low_var_kl")
    assert (paper.grpo.clip_low, paper.grpo.clip_high, paper.grpo.entropy_coef, paper.optim.grad_clip) == (
        0.2,
        0.2,
        0.0,
        1.0,
    )
    assert (paper.rollout.max_new_tokens_per_turn, paper.rollout.max_response_tokens) == (2048, 8192)
    released = load_config(str(CONFIGS[0].parent / "released_single_node.yaml"))
    assert (released.trainer.prompts_per_step, released.rollout.n, released.optim.schedule) == (
        32,
        4,
        "sigmoid",
    )


def test_yaml_then_overrides_with_yaml_scalars(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(
        "rollout:\n  n: 2\noptim:\n  lr: 1e-5\n  betas: [0.8, 0.9]\ndata:\n  train_files: [a.parquet]\n"
    )
    cfg = load_config(
        str(p),
        [
            "rollout.n=6",
            "optim.lr=3e-6",  # YAML 1.1 reads this as a string; the float field accepts it
            "data.val_files=[x.parquet, y.parquet]",
            "trainer.log_tensorboard=true",
            "search.cache_path=null",
            "search.text_backend.type=bm25",
            "search.text_backend.index_dir=idx",
        ],
    )
    assert cfg.rollout.n == 6 and cfg.optim.lr == 3e-6 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.data.train_files == ["a.parquet"] and cfg.data.val_files == ["x.parquet", "y.parquet"]
    assert cfg.trainer.log_tensorboard is True and cfg.search.cache_path is None
    assert cfg.search.text_backend == {"type": "bm25", "index_dir": "idx"}
    assert load_config(None, []) == Config()


def test_unknown_keys_are_rejected_with_the_known_list(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"unknown key 'nn' in rollout .*known keys: engine, n, temperature"
    ):
        load_config(None, ["rollout.nn=3"])
    with pytest.raises(
        ConfigError, match=r"unknown key 'rolout' in top level .*known keys: protocol, reward"
    ):
        load_config(None, ["rolout.n=3"])
    p = tmp_path / "bad.yaml"
    p.write_text("grpo:\n  kl_coeff: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'kl_coeff' in grpo"):
        load_config(str(p), [])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["rollout.n"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rollout.n=four", r"rollout.n: expected int, got str"),
        ("rollout.n=2.5", r"rollout.n: expected int, got float"),
        ("rollout.n=true", r"rollout.n: expected int, got bool"),
        ("trainer.log_wandb=1", r"trainer.log_wandb: expected bool"),
        ("optim.lr=fast", r"optim.lr: expected float"),
        ("data.train_files=5", r"data.train_files: expected list"),
        ("optim.betas=[0.9]", r"optim.betas: expected 2 values"),
        ("model.path=[1, 2]", r"model.path: expected str"),
        ("search.text_backend=3", r"search.text_backend: expected dict"),
        ("trainer=3", r"trainer: is a section"),
    ],
)
def test_type_errors_name_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.prompts_per_step=10", "trainer.mini_batch_prompts=4"], "must be divisible by"),
        (["rollout.max_new_tokens_per_turn=9000"], "max_new_tokens_per_turn=9000 must be <="),
        (["grpo.clip_low=-0.1"], "grpo.clip_low"),
        (["grpo.clip_high=-0.1"], "grpo.clip_high"),
        (["rollout.n=0"], "rollout.n=0 must be >= 1"),
        (["reward.mode=F1"], r"reward.mode='F1' must be one of \['EM', 'SubEM'\]"),
        (["optim.schedule=linear"], "optim.schedule"),
        (["grpo.loss_agg=sum"], "grpo.loss_agg"),
        (["grpo.adv_estimator=gae"], "grpo.adv_estimator"),
    ],
)
def test_cross_field_checks(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, ["rollout.n=0", "reward.mode=F1"])
    assert "rollout.n" in str(e.value) and "reward.mode" in str(e.value)


def test_legacy_launch_line_is_mapped(caplog: pytest.LogCaptureFixture) -> None:
    line = [
        "data.train_batch_size=64",
        "data.max_prompt_length=4096",
        "data.max_response_length=1024",
        "data.train_files=/d/train.parquet",
        "actor_rollout_ref.rollout.n=8",
        "actor_rollout_ref.rollout.max_gen_round=3",
        "actor_rollout_ref.rollout.response_length_total=8192",
        "actor_rollout_ref.actor.optim.lr=2e-6",
        "actor_rollout_ref.actor.kl_loss_coef=0.01",
        "actor_rollout_ref.actor.clip_ratio=0.28",
        "actor_rollout_ref.actor.entropy_coeff=0.001",
        "actor_rollout_ref.actor.ppo_mini_batch_size=16",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
        "actor_rollout_ref.model.path=/m/qwen",
        "actor_rollout_ref.rollout.temperature=0.7",
        "actor_rollout_ref.rollout.top_k=-1",
        "trainer.total_training_steps=30",
        "trainer.test_freq=5",
        "trainer.save_freq=15",
        "algorithm.adv_estimator=grpo",
        "+trainer.search_penalty=0.2",
        "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.use_multi_turn_response_mask=True",
        "actor_rollout_ref.actor.use_kl_loss=True",
    ]
    with caplog.at_level(logging.WARNING, logger="mmsearch_r1.config_io"):
        cfg = load_config(None, line)
    assert cfg.trainer.prompts_per_step == 64 and cfg.trainer.mini_batch_prompts == 16
    assert cfg.trainer.micro_batch_size == 2 and cfg.trainer.total_steps == 30
    assert (cfg.trainer.val_every, cfg.trainer.save_every) == (5, 15)
    assert (cfg.rollout.max_prompt_tokens, cfg.rollout.max_new_tokens_per_turn) == (4096, 1024)
    assert (cfg.rollout.n, cfg.rollout.max_response_tokens, cfg.protocol.max_turns) == (8, 8192, 3)
    assert cfg.optim.lr == 2e-6 and cfg.grpo.kl_coef == 0.01 and cfg.grpo.entropy_coef == 0.001
    assert cfg.grpo.clip_low == cfg.grpo.clip_high == 0.28
    assert cfg.grpo.loss_agg == "seq_mean_token_mean"
    assert cfg.model.path == "/m/qwen" and cfg.data.train_files == ["/d/train.parquet"]
    assert (cfg.rollout.temperature, cfg.rollout.top_k) == (0.7, 0)
    assert cfg.reward.search_penalty == 0.2 and cfg.grpo.adv_estimator == "grpo"
    text = caplog.text
    assert "actor_rollout_ref.actor.optim.lr" in text and "mapped to optim.lr" in text
    assert "actor_rollout_ref.rollout.name" in text and "ignored" in text
    assert text.count("mapped to") >= 19


def test_legacy_keys_nested_in_yaml_and_unsupported(tmp_path: Path) -> None:
    p = tmp_path / "verl.yaml"
    p.write_text(
        "actor_rollout_ref:\n  actor:\n    optim:\n      lr: 5.0e-7\n  rollout:\n    n: 3\n"
        "data:\n  train_batch_size: 6\ntrainer:\n  mini_batch_prompts: 3\n"
    )
    cfg = load_config(str(p), [])
    assert (cfg.optim.lr, cfg.rollout.n, cfg.trainer.prompts_per_step) == (5e-7, 3, 6)
    with pytest.raises(ConfigError, match="tensor_model_parallel_size .* is not supported"):
        load_config(None, ["actor_rollout_ref.rollout.tensor_model_parallel_size=2"])
    with pytest.raises(ConfigError, match="critic.optim.lr .* no critic"):
        load_config(None, ["critic.optim.lr=1e-5"])
    with pytest.raises(ConfigError, match="unknown key 'actor_rollout_ref'"):
        load_config(None, ["actor_rollout_ref.actor.made_up_key=1"])


def test_legacy_table_targets_exist() -> None:
    cfg_dict = config_to_dict(Config())
    for key, rule in LEGACY_KEYS.items():
        assert rule.targets or rule.note or rule.error, key
        for target in rule.targets:
            section, name = target.split(".")
            assert name in cfg_dict[section], f"{key} -> {target}"


def test_save_config_writes_every_field(tmp_path: Path) -> None:
    cfg = load_config(None, ["rollout.n=5", "optim.betas=[0.5, 0.6]"])
    text = save_config(cfg, tmp_path / "sub" / "cfg.yaml").read_text()
    assert "n: 5" in text
    for f in dataclasses.fields(Config):
        assert f"{f.name}:" in text
    assert load_config(tmp_path / "sub" / "cfg.yaml", []).optim.betas == (0.5, 0.6)


def test_config_io_imports_without_torch() -> None:
    code = "import sys, mmsearch_r1.config_io; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
