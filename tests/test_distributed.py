"""FSDP2 data parallel on CPU: 2 processes (torchrun, gloo) and 1 process, same global batch, same update.

Both runs train 2 steps (rollouts on each rank's share of the prompts, KL to a reference, weights synced to the
rollout copy after step 1, a gathered checkpoint at the end). AdamW's epsilon is set large (1.0) so that the
update is proportional to the gradient rather than to its sign: a gradient error would show up in the
parameters. Checked: per-step rewards and grad norms agree, and the final parameters agree to float tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.test_trainer import build_world

from mmsearch_r1.rl.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
from mmsearch_r1.config_io import load_config
from mmsearch_r1.rl.trainer import train
from tests.test_trainer import forced_hook
overrides = json.load(open(sys.argv[1]))
train(load_config(None, overrides), engine_hook=forced_hook())
"""


def _overrides(model_dir, world, run_dir, compute="float32"):
    from tests.test_trainer import train_config  # noqa: F401  (same settings, as a list of overrides)

    base = {
        "model.path": str(model_dir), "trainer.run_dir": str(run_dir), "trainer.total_steps": 2,
        "trainer.prompts_per_step": 2, "trainer.mini_batch_prompts": 2, "trainer.micro_batch_size": 1,
        "trainer.val_every": 0, "trainer.val_before_train": False, "trainer.save_every": 0,
        "trainer.traces_per_step": 1, "rollout.n": 2, "rollout.max_new_tokens_per_turn": 48,
        "rollout.max_response_tokens": 1000, "rollout.max_prompt_tokens": 2000, "rollout.max_images": 4,
        "rollout.schedule": "round_sync", "rollout.tool_workers": 1, "grpo.kl_coef": 0.01,
        # one trajectory per generate call: in bf16 the engine's log-probs move with the batch's composition
        # (about 0.03 on this model), and one process batches what two processes split
        "rollout.max_batch_size": 1,
        "grpo.logprob_chunk_tokens": 64, "optim.lr": 1e-2, "optim.eps": 1.0, "optim.grad_clip": 0.0,
        "data.shuffle": False, "model.param_dtype": "float32", "model.compute_dtype": compute, **world,
    }  # fmt: skip
    return [f"{k}={v}" for k, v in base.items()]


def _run(cmd: list[str], overrides: list[str], tmp: Path, name: str) -> None:
    args = tmp / f"{name}.json"
    args.write_text(json.dumps(overrides))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd + [str(args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


@pytest.mark.parametrize("compute", ["float32", "bfloat16"])
def test_two_process_fsdp2_matches_one_process(tiny_model_dir, tmp_path, compute):
    """fp32, and fp32 master with bf16 compute (FSDP2 MixedPrecisionPolicy vs precision.MasterWeightPolicy)."""
    from safetensors.torch import load_file

    world = build_world(tmp_path / "world")
    script = tmp_path / "run_train.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    _run(
        [sys.executable, str(script)],
        _overrides(tiny_model_dir, world, tmp_path / "one", compute),
        tmp_path,
        "one",
    )
    _run(
        [torchrun, "--standalone", "--nproc_per_node", "2", str(script)],
        _overrides(tiny_model_dir, world, tmp_path / "two", compute),
        tmp_path,
        "two",
    )
    one, two = (
        read_metrics(tmp_path / "one" / "metrics.jsonl"),
        read_metrics(tmp_path / "two" / "metrics.jsonl"),
    )
    assert [r["step"] for r in two] == [1, 2]
    for a, b in zip(one, two, strict=True):
        print(f"{compute} step {a['step']}: grad norm {a['actor/grad_norm']:.8f} vs {b['actor/grad_norm']:.8f}, "
              f"pg_loss {a['actor/pg_loss']:.8f} vs {b['actor/pg_loss']:.8f}")  # fmt: skip
        assert a["rollout/n_trajectories"] == b["rollout/n_trajectories"] == 4
        assert abs(a["reward/mean"] - b["reward/mean"]) < 1e-9
        assert abs(a["actor/grad_norm"] - b["actor/grad_norm"]) <= 1e-4 * a["actor/grad_norm"]
        assert abs(a["actor/pg_loss"] - b["actor/pg_loss"]) < 1e-5
    # the checkpoint keeps the fp32 master (final/ is the compute-dtype copy)
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    ck = Path("checkpoints") / "step_000002" / "model" / "model.safetensors"
    p1 = load_file(str(tmp_path / "one" / ck))
    p2 = load_file(str(tmp_path / "two" / ck))
    assert {v.dtype for v in p1.values()} == {v.dtype for v in p2.values()} == {torch.float32}
    final = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    assert {v.dtype for v in final.values()} == {getattr(torch, compute)}
    assert p1.keys() == p2.keys()
    moved = 0
    for k in p1:
        d1, d2 = p1[k] - start[k], p2[k] - start[k]
        moved += bool(d1.abs().max() > 0)
        assert torch.allclose(d1, d2, rtol=1e-2, atol=1e-6 + 1e-2 * float(d1.abs().max())), k
    assert moved >= 0.9 * len(p1)  # (a few tiny updates round away in fp32 at this lr; equal in both runs)
