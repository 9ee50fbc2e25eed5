"""Time per phase and peak memory of one GRPO step on the tiny model, plus the log-prob memory benchmark.

Setup: the tiny Qwen2.5-VL (`build_tiny_model`, seed 0) and the local search world of tests/test_trainer.py
(4 pages, 4 pictures, BM25 + image index); 2 prompts x 4 rollouts per step, group 0 of each prompt pushed through
image search -> text search -> answer (protocol tags forced around sampled words), the others sampling freely;
KL to a reference (so the reference forward is timed too). Three steps run; step 1 is a warm-up and the figures
are the mean of steps 2 and 3 (`perf/*` from metrics.jsonl). Peak memory is this process's peak resident set
size (CPU), or the CUDA peak allocated when a GPU is used.

Then `benchmarks/logprob_memory.py` runs (its own subprocesses): peak memory of forward + backward log-probs of a
4,096-token sequence with a 151,936-entry vocabulary, chunked vs naive full logits.

Usage: python benchmarks/train_step.py [--skip-logprob]. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-logprob", action="store_true")
    args = ap.parse_args()
    import torch
    from tests.test_trainer import build_world, forced_hook, train_config

    from mmsearch_r1.model.tiny import build_tiny_model
    from mmsearch_r1.rl.metrics import read_metrics
    from mmsearch_r1.rl.trainer import train

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        model = build_tiny_model(t / "model", seed=0)
        world = build_world(t / "world")
        cfg = train_config(
            model, world, t / "run",
            **{"trainer.total_steps": 3, "rollout.n": 4, "trainer.micro_batch_size": 4, "trainer.save_every": 0},
        )  # fmt: skip
        train(cfg, engine_hook=forced_hook())
        rows = read_metrics(t / "run" / "metrics.jsonl")[1:]
    keys = [
        "perf/time_rollout_s",
        "perf/time_logprob_s",
        "perf/time_update_s",
        "perf/time_step_s",
        "perf/tokens_per_s",
    ]
    print(f"{'phase':28s} {'mean of steps 2-3':>18s}")
    for k in keys:
        out[k] = sum(r[k] for r in rows) / len(rows)
        print(f"{k:28s} {out[k]:18.3f}")
    if torch.cuda.is_available():
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_mem_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'peak memory (MB)':28s} {out['peak_mem_mb']:18.1f}")
    out["trajectories_per_step"] = rows[-1]["rollout/n_trajectories"]
    if not args.skip_logprob:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "logprob_memory.py")], capture_output=True, text=True
        )
        print(proc.stdout.rstrip())
        if proc.returncode == 0:
            lp = json.loads(proc.stdout.strip().splitlines()[-1])
            out.update({f"logprob/{k}": v for k, v in lp.items() if isinstance(v, (int, float))})
        else:
            print(proc.stderr[-2000:], file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
