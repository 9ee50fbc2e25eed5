"""The memory plan: parameter counts from the architecture, the paper config on 8 x 80 GiB, its exact rows
against the storage of a real 2-process FSDP2 run, and `train` stopping at once on a plan that cannot fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmsearch_r1.cli import main
from mmsearch_r1.config_io import load_config
from mmsearch_r1.rl.memory_plan import GiB, model_shape, plan_memory

ROOT = Path(__file__).resolve().parents[1]
PAPER = str(ROOT / "configs" / "paper_qwen25vl7b_fvqa.yaml")


def test_parameter_counts_of_the_released_models_and_a_local_dir(tiny_model_dir):
    from mmsearch_r1.model import load_model

    assert model_shape("Qwen/Qwen2.5-VL-7B-Instruct").n_params == 8_292_166_656
    assert model_shape("Qwen/Qwen2.5-VL-3B-Instruct").n_params == 3_754_622_976
    tiny = load_model(tiny_model_dir)
    assert model_shape(str(tiny_model_dir)).n_params == sum(p.numel() for p in tiny.parameters())
    assert model_shape(str(tiny_model_dir), params=7.6e9).n_params == 7_600_000_000
    with pytest.raises(FileNotFoundError, match="neither a local model directory"):
        model_shape("some/unknown-model")


def test_paper_config_fits_8_x_80_gib_and_not_one(capsys):
    assert main(["plan", PAPER, "--gpus", "8", "--gpu-mem-gb", "80"]) == 0
    out = capsys.readouterr().out
    assert "8,292,166,656 parameters" in out and "fits:" in out
    for row in (
        "master params",
        "gradients",
        "optimizer (AdamW)",
        "reference model",
        "KV cache",
        "activations",
    ):
        assert row in out
    plan = plan_memory(load_config(PAPER), 8, 80)
    assert plan.fits and plan.row("master params").bytes == plan.row("gradients").bytes
    # fp32 master, grads and Adam state: 16 bytes per parameter over 8 ranks (to within the shard rounding)
    exact = sum(plan.row(n).bytes for n in ("master params", "gradients", "optimizer (AdamW)"))
    assert abs(exact - 16 * 8_292_166_656 / 8) < 1e-3 * exact
    assert main(["plan", PAPER, "--gpus", "1", "--gpu-mem-gb", "80"]) == 3
    assert "DOES NOT FIT" in capsys.readouterr().out
    assert main(["plan", PAPER, "--gpus", "8", "--gpu-mem-gb", "80", "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["fits"] is True and js["peak_bytes"] == plan.peak_bytes and js["world_size"] == 8


def test_vllm_pool_is_its_share_of_the_gpu_and_must_hold_the_weights(capsys):
    cfg = load_config(PAPER, ["rollout.vllm_gpu_memory_utilization=0.5"])
    plan = plan_memory(cfg, 8, 80)
    assert plan.row("vLLM pool (weights + KV cache)").bytes == int(0.5 * 80 * GiB)
    assert plan.row("vLLM pool (weights + KV cache)").phase == "rollout"  # released while training
    assert plan.fits and not plan.problems
    # 0.1 of 80 GiB cannot hold 7B bf16 weights (15.4 GiB): no total makes that work
    small = plan_memory(load_config(PAPER, ["rollout.vllm_gpu_memory_utilization=0.1"]), 8, 80)
    assert small.fits is False and "vllm_gpu_memory_utilization" in small.problems[0]
    assert (
        main(["plan", PAPER, "rollout.vllm_gpu_memory_utilization=0.1", "--gpus", "8", "--gpu-mem-gb", "80"])
        == 3
    )
    assert "cannot hold the weights" in capsys.readouterr().out


SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, {root!r})
from mmsearch_r1.model import load_model, load_processor
from mmsearch_r1.rl import distributed as D
from mmsearch_r1.rl.batch import PolicyForward
from mmsearch_r1.rl.sft import collate, masked_nll_sum
from mmsearch_r1.rl.sft_data import tokenize_conversation
from mmsearch_r1.config import ProtocolConfig
from tests.test_sft import conversations
info = D.init_distributed()
model_dir, out = sys.argv[1], sys.argv[2]
renderer = load_processor(model_dir)
policy = D.shard_policy(PolicyForward(load_model(model_dir, "float32")), info, torch.bfloat16)
opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
items = [tokenize_conversation(c, renderer, 4096) for c in conversations(ProtocolConfig())]
batch = collate(items[info.rank * 2 : info.rank * 2 + 2], renderer, "cpu")
masked_nll_sum(policy, batch)[0].backward()
opt.step()
def nbytes(t):
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()
params = list(policy.parameters())
counts = dict(
    params=sum(nbytes(p) for p in params),
    grads=sum(nbytes(p.grad) for p in params),
    optim=sum(nbytes(opt.state[p][k]) for p in params for k in ("exp_avg", "exp_avg_sq")),
    dtypes=sorted({{str(p.dtype) for p in params}} | {{str(p.grad.dtype) for p in params}}),
)
if info.rank == 0:
    json.dump(counts, open(out, "w"))
D.shutdown(info)
"""


def test_exact_rows_match_a_real_two_process_fsdp2_run(tiny_model_dir, tmp_path):
    script = tmp_path / "count.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "counts.json"
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(tiny_model_dir), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    real = json.loads(out.read_text())
    assert real["dtypes"] == [
        "torch.float32"
    ]  # sharded master and its gradients stay fp32 under bf16 compute
    cfg = load_config(None, [f"model.path={tiny_model_dir}", "model.compute_dtype=bfloat16"])
    plan = plan_memory(cfg, 2, 80)
    for row, key in (("master params", "params"), ("gradients", "grads"), ("optimizer (AdamW)", "optim")):
        planned = plan.row(row).bytes
        print(f"{row}: plan {planned} bytes, FSDP2 rank 0 {real[key]} bytes")
        assert abs(planned - real[key]) <= 0.01 * real[key]


def test_train_stops_at_once_when_the_plan_cannot_fit(tiny_model_dir, tmp_path, capsys):
    t0 = time.perf_counter()
    rc = main(
        [
            "train",
            f"model.path={tiny_model_dir}",
            f"trainer.run_dir={tmp_path / 'run'}",
            "data.train_files=[nowhere.parquet]",
            "--gpu-mem-gb",
            "0.01",
        ]
    )
    assert rc == 1 and time.perf_counter() - t0 < 30
    cap = capsys.readouterr()
    assert "DOES NOT FIT" in cap.out and "master params" in cap.out
    assert "change" in cap.err and "--ignore-memory-plan" in cap.err and "activations" in cap.err
    assert not (tmp_path / "run").exists()  # nothing started
    plan = plan_memory(load_config(None, [f"model.path={tiny_model_dir}"]), 1, 0.01)
    assert plan.peak_bytes > 0.01 * GiB
