"""SFT through the shared training set-up under torchrun: 2 processes (FSDP2) match 1 process, fp32 master
with bf16 compute, and the checkpoint keeps the fp32 master."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from tests.test_sft import conversations

from mmsearch_r1.config import ProtocolConfig
from mmsearch_r1.rl.metrics import read_metrics
from mmsearch_r1.rl.sft_data import write_conversations

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
from mmsearch_r1.config_io import load_config
from mmsearch_r1.rl.sft import run_sft
run_sft(load_config(None, json.load(open(sys.argv[1]))))
"""


def _args(tmp: Path, model_dir: Path, run: str) -> list[str]:
    return [
        f"model.path={model_dir}",
        "model.param_dtype=float32",
        "model.compute_dtype=bfloat16",
        f"sft.train_files=[{tmp / 'c.jsonl'}]",
        f"sft.run_dir={tmp / run}",
        "sft.max_steps=2",
        "sft.batch_size=4",
        "sft.micro_batch_size=1",
        "sft.lr=1e-3",
        "sft.shuffle=false",
        "optim.eps=1.0",  # the update follows the gradient (not its sign): a gradient error would show
        "optim.grad_clip=0.0",
    ]


def _run(cmd: list[str], args: list[str], tmp: Path, name: str) -> None:
    f = tmp / f"{name}.json"
    f.write_text(json.dumps(args))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd + [str(f)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def test_two_process_sft_matches_one_process_in_mixed_precision(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    write_conversations(tmp_path / "c.jsonl", conversations(ProtocolConfig()))
    script = tmp_path / "run_sft.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    _run([sys.executable, str(script)], _args(tmp_path, tiny_model_dir, "one"), tmp_path, "one")
    _run([torchrun, "--standalone", "--nproc_per_node", "2", str(script)], _args(tmp_path, tiny_model_dir, "two"),
         tmp_path, "two")  # fmt: skip
    one, two = (
        read_metrics(tmp_path / "one" / "metrics.jsonl"),
        read_metrics(tmp_path / "two" / "metrics.jsonl"),
    )
    assert [r["step"] for r in two] == [1, 2]
    for a, b in zip(one, two, strict=True):
        print(f"step {a['step']}: loss {a['sft/loss']:.7f} vs {b['sft/loss']:.7f}, "
              f"grad norm {a['sft/grad_norm']:.7f} vs {b['sft/grad_norm']:.7f}")  # fmt: skip
        assert a["sft/tokens"] == b["sft/tokens"]
        assert abs(a["sft/loss"] - b["sft/loss"]) <= 1e-5 * abs(a["sft/loss"])
        assert abs(a["sft/grad_norm"] - b["sft/grad_norm"]) <= 1e-4 * a["sft/grad_norm"]
    ck = Path("checkpoints") / "step_000002" / "model" / "model.safetensors"
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    p1, p2 = load_file(str(tmp_path / "one" / ck)), load_file(str(tmp_path / "two" / ck))
    assert {v.dtype for v in p1.values()} == {v.dtype for v in p2.values()} == {torch.float32}
    moved = 0
    for k in p1:
        d1, d2 = p1[k] - start[k], p2[k] - start[k]
        moved += bool(d1.abs().max() > 0)
        assert torch.allclose(d1, d2, rtol=1e-2, atol=1e-2 * float(d1.abs().max())), k
    assert moved >= 0.9 * len(
        p1
    )  # (with eps=1 the tiniest norm-weight updates fall below fp32's step at 1.0)
    final = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    assert {v.dtype for v in final.values()} == {torch.bfloat16}  # exported in the compute dtype
    for k in final:
        assert torch.equal(final[k], p2[k].to(torch.bfloat16)), k
