"""`mmsearch-r1 eval` data parallel: 2 processes (torchrun, gloo, CPU) write the same `samples.jsonl` and summary
as 1 process, wall-clock fields aside (greedy; `--chunk-size 1`, so every generate call holds one request and no padding differs), with
the shards merged back into the input order and removed. The rag policy forces an image search in turn 1, so
real local search tools run on both ranks. Also: `--engine vllm` without vLLM is one line before any model loads.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_eval_tiny import ROWS, world  # noqa: F401  (the fixture: parquet + local search indexes)

ROOT = Path(__file__).resolve().parents[1]


def _eval(args: list[str], nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    if nproc == 1:
        cmd = [sys.executable, "-m", "mmsearch_r1.cli", "eval", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
        cmd += ["--master_port", "29571", "-m", "mmsearch_r1.cli", "eval", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)


def untimed(obj):
    """`obj` without its wall-clock fields (keys ending in `_s`: tool latencies, wall time)."""
    if isinstance(obj, dict):
        return {k: untimed(v) for k, v in obj.items() if not k.endswith("_s")}
    if isinstance(obj, list):
        return [untimed(v) for v in obj]
    return obj


@pytest.mark.slow
def test_two_ranks_write_what_one_rank_writes(tiny_model_dir, world, tmp_path):  # noqa: F811
    base = ["--model", str(tiny_model_dir), "--data", str(world / "test.parquet"), "--search"]
    base += [str(world / "search.yaml"), "--policy", "rag", "--max-new-tokens", "16", "--chunk-size", "1"]
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"np{n}"
        proc = _eval([*base, "--out", str(out)], n)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        assert proc.stdout.count("samples.jsonl (5 samples)") == 1  # printed by rank 0 only
        assert not (out / "shards").exists()
        outs[n] = out
    one, two = ([json.loads(r) for r in (outs[n] / "samples.jsonl").read_text().splitlines()] for n in (1, 2))
    assert [r["id"] for r in two] == [r[0] for r in ROWS]
    assert untimed(two) == untimed(one)
    assert sum(len(r["turns"]) for r in two) >= 5 and all(r["turns"][0]["tool"]["ok"] for r in two)
    s1, s2 = (json.loads((outs[n] / "summary.json").read_text()) for n in (1, 2))
    assert untimed(s2) == untimed(s1) and s2["n_samples"] == 5
    assert (outs[2] / "summary.md").read_text() != ""


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="checks the error without vLLM")
def test_eval_engine_vllm_without_vllm_is_one_line(tmp_path):
    data = tmp_path / "d.parquet"
    data.write_bytes(b"not read: the engine check comes first")
    proc = _eval(["--model", str(tmp_path / "no_model"), "--data", str(data), "--engine", "vllm"], 1)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "vLLM is not installed" in lines[0], proc.stderr
