"""The released launch script's 58 override lines (docs/config.md) and the README's extra keys load here.

`mmsearch-r1 train --print-config` with all of them exits 0, prints the resolved config, and logs exactly one
"accepted and ignored" line per ignored key; the resolved values are the script's. Values that would change the
run are refused with what to use instead. The docs table is the code's table.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmsearch_r1.config_io import LEGACY_KEYS, ConfigError, legacy_table_markdown, load_config

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_LINES = """
algorithm.adv_estimator=grpo
data.train_files=TRAIN
data.val_files=VAL
data.train_batch_size=32
data.max_prompt_length=4096
data.max_response_length=2048
data.image_key=images
data.user_prompt_round_1=mmsearch_r1/prompts/round_1_user_prompt_qwenvl.pkl
data.user_prompt_after_image_search=mmsearch_r1/prompts/after_image_search_prompt_qwenvl.pkl
data.user_prompt_after_text_search=mmsearch_r1/prompts/after_text_search_prompt_qwenvl.pkl
actor_rollout_ref.model.path=Qwen/Qwen2.5-VL-7B-Instruct
actor_rollout_ref.actor.optim.lr=2e-6
actor_rollout_ref.actor.optim.lr_sigmoid_decay_warmup=True
actor_rollout_ref.actor.optim.lr_sigmoid_decay_ratio=0.95
actor_rollout_ref.actor.optim.lr_sigmoid_decay_warmup_steps=45
actor_rollout_ref.model.use_remove_padding=True
actor_rollout_ref.actor.ppo_mini_batch_size=32
actor_rollout_ref.actor.entropy_coeff=0
actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8
actor_rollout_ref.actor.use_multi_turn_response_mask=True
actor_rollout_ref.actor.use_kl_loss=True
actor_rollout_ref.actor.kl_loss_coef=0.001
actor_rollout_ref.actor.kl_loss_type=low_var_kl
actor_rollout_ref.model.enable_gradient_checkpointing=True
actor_rollout_ref.actor.fsdp_config.param_offload=False
actor_rollout_ref.actor.fsdp_config.optimizer_offload=False
actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16
actor_rollout_ref.rollout.tensor_model_parallel_size=1
actor_rollout_ref.rollout.name=vllm_multiturn_mmsearch
actor_rollout_ref.rollout.gpu_memory_utilization=0.6
actor_rollout_ref.rollout.enable_chunked_prefill=False
actor_rollout_ref.rollout.enforce_eager=False
actor_rollout_ref.rollout.free_cache_engine=False
actor_rollout_ref.rollout.n=4
actor_rollout_ref.rollout.max_gen_round=3
actor_rollout_ref.rollout.response_length_total=8192
actor_rollout_ref.rollout.search.topk=5
actor_rollout_ref.rollout.search.image_search_limit=1
actor_rollout_ref.rollout.search.text_search_limit=2
actor_rollout_ref.rollout.search.parallel_tool_call=True
actor_rollout_ref.rollout.search.parallel_tool_call_threads=8
actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16
actor_rollout_ref.ref.fsdp_config.param_offload=True
algorithm.kl_ctrl.kl_coef=0.001
trainer.critic_warmup=0
trainer.logger=['console','wandb']
trainer.project_name=PROJ
trainer.experiment_name=EXP
trainer.n_gpus_per_node=8
trainer.nnodes=1
trainer.save_freq=100
trainer.test_freq=100
trainer.total_epochs=30
+trainer.search_penalty=0.1
+trainer.format_penalty=0.1
+trainer.reward_mode="EM"
+trainer.val_before_train=True
+algorithm.filter_groups.enable=False
""".split()
README_KEYS = [
    "+trainer.val_only=True",
    "+trainer.val_only_save_dir=/tmp/val_gen",
    "+trainer.use_search_count_penalty=True",
    "+trainer.search_penalty_warmup_steps=10",
]


def _ignored(lines: list[str]) -> list[str]:
    keys = [line.split("=", 1)[0].lstrip("+") for line in lines]
    return [k for k in keys if k in LEGACY_KEYS and not LEGACY_KEYS[k].targets]


def test_launch_lines_count() -> None:
    assert len(LAUNCH_LINES) == 58 and len({x.split("=")[0] for x in LAUNCH_LINES}) == 58


def test_print_config_accepts_the_released_launch_script(tmp_path: Path) -> None:
    lines = [x.replace("TRAIN", str(tmp_path / "train.parquet")).replace("VAL", str(tmp_path / "val.parquet"))
             for x in LAUNCH_LINES] + README_KEYS  # fmt: skip
    # run as a user would, and check that checking a launch line loads no model code (no torch)
    code = (
        "import sys; from mmsearch_r1.cli import main; rc = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    cmd = [sys.executable, "-c", code, "train", "--print-config", *lines]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    for key in _ignored(lines):
        assert proc.stderr.count(f"config: {key} (override) accepted and ignored") == 1, key
    assert proc.stderr.count("accepted and ignored") == len(_ignored(lines)) == 23
    assert "error" not in proc.stderr.lower()
    d = yaml.safe_load(proc.stdout)
    o, r, p, g, t, w = d["optim"], d["rollout"], d["protocol"], d["grpo"], d["trainer"], d["reward"]
    assert (o["lr"], o["schedule"], o["sigmoid_ratio"], o["sigmoid_center"]) == (2e-6, "sigmoid", 0.95, 45)
    assert (r["n"], r["max_prompt_tokens"], r["max_new_tokens_per_turn"], r["max_response_tokens"]) == (
        4,
        4096,
        2048,
        8192,
    )
    assert (r["engine"], r["tool_workers"], d["search"]["top_k"]) == ("vllm", 8, 5)
    assert r["vllm_gpu_memory_utilization"] == 0.6
    assert (p["max_turns"], p["max_image_searches"], p["max_text_searches"], p["max_searches"]) == (
        3,
        1,
        2,
        3,
    )
    assert (w["search_penalty"], w["format_weight"], w["mode"]) == (0.1, 0.1, "EM")
    assert (w["penalty_per_search"], w["penalty_warmup_steps"]) == (True, 10)
    assert (g["kl_coef"], g["kl_kind"], g["entropy_coef"], g["dynamic_sampling"]) == (
        0.001,
        "low_var_kl",
        0.0,
        False,
    )
    assert (t["prompts_per_step"], t["mini_batch_prompts"], t["micro_batch_size"]) == (32, 32, 8)
    assert (t["val_every"], t["save_every"], t["val_before_train"], t["log_wandb"]) == (100, 100, True, True)
    assert (t["val_only"], t["val_only_save_dir"], t["wandb_project"]) == (True, "/tmp/val_gen", "PROJ")
    assert (
        d["model"]["path"] == "Qwen/Qwen2.5-VL-7B-Instruct" and d["model"]["gradient_checkpointing"] is True
    )
    assert d["data"]["train_files"] == [str(tmp_path / "train.parquet")]


def test_released_config_with_the_launch_lines_stays_original() -> None:
    cfg = load_config(
        ROOT / "configs" / "released_single_node.yaml",
        [x for x in LAUNCH_LINES if "TRAIN" not in x and "VAL" not in x],
    )
    assert cfg.protocol.profile == "original" and cfg.optim.weight_decay == 0.01
    assert (cfg.protocol.max_searches, cfg.rollout.n, cfg.optim.schedule) == (3, 4, "sigmoid")


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("actor_rollout_ref.rollout.tensor_model_parallel_size=2", "tensor/sequence parallelism"),
        ("actor_rollout_ref.actor.use_kl_loss=False", "grpo.kl_coef=0"),
        ("actor_rollout_ref.rollout.name=sglang", "rollout.engine"),
        ("data.image_key=pictures", "rename the column"),
        ("actor_rollout_ref.actor.optim.lr_sigmoid_decay_warmup=maybe", "true or false"),
        ("trainer.logger=['console','mlflow']", "unknown loggers"),
        ("trainer.critic_warmup=5", "no critic"),
    ],
)
def test_values_that_would_change_the_run_are_refused(line: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, [line])


def test_docs_table_is_the_code_table() -> None:
    doc = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert legacy_table_markdown() in doc
    for key in LEGACY_KEYS:
        assert doc.count(f"| `{key}` |") == 1, key
