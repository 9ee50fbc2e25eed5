"""Fault injection: GRPO on the tiny world with failing search, killed twice with SIGKILL and resumed.

Setup: the tiny Qwen2.5-VL (seed 0) and the local search world of tests/test_trainer.py, served by the real search
service (uvicorn, loopback); the trainer reaches it through the `"service"` client backends via a fault proxy
(tests/_faults.py) that fails `--rate` (30 %) of request bodies in every documented way: HTTP 500, HTTP 429, a
timeout, a connection reset (RST, no answer) and malformed JSON. Group 0 of each prompt is pushed through image
search -> text search -> answer (tags forced, words sampled), so every step searches.

Two runs of `--steps` (20) GRPO steps, same seed, each in its own child processes and behind its own proxy:
- A, uninterrupted;
- B, killed with SIGKILL twice at random points (seeded: after a random step's metrics row, a random delay into
  the next step) and resumed with `--resume` each time.
Checks: both finish; the final weights are equal (max absolute difference over every tensor); every fault the
proxy injected into A is counted in A's metrics (`search/*/errors`: one per failed attempt; `search/*/retries`:
one per transient fault); B's metrics count every fault of the steps they record (faults injected into steps
that a kill cut short are reported apart). Ends with one JSON line.

Usage: python benchmarks/fault_injection.py [--steps 20] [--rate 0.3] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def _child(spec_path: str, resume: bool) -> int:
    import torch

    torch.set_num_threads(1)
    from mmsearch_r1.config_io import load_config
    from mmsearch_r1.rl.trainer import train
    from test_trainer import forced_hook

    overrides = json.loads(Path(spec_path).read_text())
    train(load_config(None, overrides), resume=resume, engine_hook=forced_hook())
    return 0


def _start(spec: Path, resume: bool, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, __file__, "--child", str(spec)] + (["--resume"] if resume else [])
    return subprocess.Popen(cmd, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT)


def _rows(run: Path) -> int:
    p = run / "metrics.jsonl"
    return p.read_text().count("\n") if p.is_file() else 0


def _counted(run: Path) -> dict[str, float]:
    from mmsearch_r1.rl.metrics import SEARCH_COUNTERS, read_metrics

    rows = read_metrics(run / "metrics.jsonl")
    kinds = ("image", "text", "read", "summarize")
    out = {n: sum(r.get(f"search/{k}/{n}", 0.0) for r in rows for k in kinds) for n in SEARCH_COUNTERS}
    out["steps"] = len(rows)
    return out


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted((run / "final").glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rate", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)
    ap.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args.child, args.resume)

    from _faults import FaultProxy
    from mmsearch_r1.model.tiny import build_tiny_model
    from test_hardening_faults import faulty_search, serve_search
    from test_trainer import build_world

    t_start = time.perf_counter()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        model = build_tiny_model(t / "model", seed=0)
        world = build_world(t / "world")
        url, stop = serve_search(world)
        proxies = {
            name: FaultProxy(url, rate=args.rate, seed=args.seed, delay_s=0.8).start() for name in "AB"
        }
        specs = {}
        for name, proxy in proxies.items():
            base = {
                "model.path": str(model), "trainer.run_dir": str(t / name), "trainer.total_steps": args.steps,
                "trainer.prompts_per_step": 2, "trainer.mini_batch_prompts": 2, "trainer.micro_batch_size": 2,
                "trainer.val_every": 0, "trainer.val_before_train": False, "trainer.save_every": 1,
                "trainer.keep_last": 2, "trainer.traces_per_step": 0, "trainer.seed": args.seed, "rollout.n": 2,
                "rollout.max_new_tokens_per_turn": 48, "rollout.max_response_tokens": 1000,
                "rollout.max_prompt_tokens": 2000, "rollout.max_images": 4, "rollout.max_batch_size": 16,
                "rollout.schedule": "round_sync", "rollout.tool_workers": 2, "grpo.kl_coef": 0.0,
                "grpo.logprob_chunk_tokens": 64, "optim.lr": 1e-3, "optim.grad_clip": 1.0,
                **world, **faulty_search(proxy.url),
            }  # fmt: skip
            specs[name] = t / f"{name}.json"
            specs[name].write_text(json.dumps([f"{k}={v}" for k, v in base.items()]))
        log = t / "children.log"
        try:
            a = _start(specs["A"], False, log)  # A and B run side by side
            b = _start(specs["B"], False, log)
            kill_after = sorted(rng.sample(range(2, args.steps - 2), 2))
            kills = resumes = 0
            for k in kill_after:
                while _rows(t / "B") < k and b.poll() is None:
                    time.sleep(0.05)
                time.sleep(rng.uniform(0.0, 1.0))  # somewhere inside the next step
                if b.poll() is not None:
                    print(log.read_text()[-4000:], file=sys.stderr)
                    raise SystemExit(f"run B ended before its kill (rc={b.returncode})")
                b.send_signal(signal.SIGKILL)
                b.wait()
                kills += 1
                proxies["B"].new_generation()  # a fresh client process: transient faults start over
                b = _start(specs["B"], True, log)
                resumes += 1
            rc_a, rc_b = a.wait(), b.wait()
            if rc_a or rc_b:
                print(log.read_text()[-4000:], file=sys.stderr)
                raise SystemExit(f"a training process failed: A rc={rc_a}, B rc={rc_b}")
            wa, wb = _weights(t / "A"), _weights(t / "B")
            assert wa.keys() == wb.keys() and wa
            max_diff = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
            ca, cb = _counted(t / "A"), _counted(t / "B")
            inj_a, inj_b = proxies["A"].injected, proxies["B"].injected
        finally:
            for p in proxies.values():
                p.stop()
            stop()
    n_a = sum(inj_a.values())
    out = {
        "steps": args.steps,
        "fault_rate": args.rate,
        "seed": args.seed,
        "faults_injected": n_a,
        "faults_counted": ca["errors"],
        "faults_by_kind": dict(sorted(inj_a.items())),
        "retries_counted": ca["retries"],
        "retries_expected": n_a - inj_a.get("malformed_json", 0),
        "search_calls": ca["calls"],
        "kills": kills,
        "resumes": resumes,
        "kill_after_steps": kill_after,
        "killed_run_faults_injected": sum(inj_b.values()),
        "killed_run_faults_counted": cb["errors"],
        "killed_run_steps_logged": cb["steps"],
        "max_weight_diff": max_diff,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }
    ok = n_a == ca["errors"] and out["retries_counted"] == out["retries_expected"] and max_diff == 0.0
    ok = ok and cb["steps"] == args.steps and cb["errors"] <= sum(inj_b.values())
    print(f"faults injected into A: {n_a} {dict(inj_a)}; counted in A's metrics: {ca['errors']:.0f}")
    print(f"B killed after steps {kill_after} and resumed twice; max weight difference A vs B: {max_diff}")
    print(json.dumps(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
