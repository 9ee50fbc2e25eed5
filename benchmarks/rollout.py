"""Rollout scheduling benchmark: async (tools overlap generation) vs round-synchronous vs the critical path.

Workload: 8 prompts x 4 rollouts on a tiny random Qwen2.5-VL (built in-process, byte-level vocabulary) with
the HF engine. Each group member follows one path, with protocol tags forced around tokens the model really
samples (`ForcedActionEngine`): answer directly; image search -> answer; image search -> text search -> answer;
text search -> answer. Tool calls sleep for a latency drawn per (sample, tool, argument) from an exponential
distribution with mean `--latency` (default 0.5 s; `--dist const` for a fixed latency); both schedules see the
same latency for the same call. The tools are delayed in-process fakes returning two thumbnails (image search)
or a text summary (text search): this checkout has no search service yet, so its HTTP hop is not measured.

Figures: wall time of the async schedule, its critical-path lower bound (max over trajectories of the wall
time of the generate calls it was part of plus its own tool latencies), and the round_sync schedule's wall
time, all in this run. Targets: async within 1.25x of the bound, and >= 1.5x faster than round_sync.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time

import torch
from PIL import Image

from mmsearch_r1.config import ProtocolConfig, RolloutConfig
from mmsearch_r1.rollout.engine import ForcedActionEngine, GenerationRequest, SamplingParams
from mmsearch_r1.rollout.hf_engine import HFEngine
from mmsearch_r1.rollout.loop import run_rollouts
from mmsearch_r1.rollout.testing import FakeTool, build_byte_vlm
from mmsearch_r1.types import Answers, Sample

PATHS = (
    ["<answer>x</answer>"],
    ["<search><img></search>", "<answer>x</answer>"],
    ["<search><img></search>", "<text_search>object</text_search>", "<answer>x</answer>"],
    ["<text_search>object</text_search>", "<answer>x</answer>"],
)


def latency_fn(mean: float, dist: str, seed: int):
    def delay(arg: str | None, sample: Sample) -> float:
        if dist == "const":
            return mean
        h = hashlib.sha256(f"{seed}|{sample.id}|{arg}".encode()).digest()
        u = (int.from_bytes(h[:8], "little") + 0.5) / 2**64
        return -mean * math.log(u)

    return delay


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latency", type=float, default=0.5, help="mean tool latency per call, seconds")
    ap.add_argument("--dist", choices=["exp", "const"], default="exp")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--sampled-tokens", type=int, default=16, help="tokens the model samples per turn")
    ap.add_argument("--max-batch-size", type=int, default=64, help="generation batch cap (both schedules)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

    model, renderer = build_byte_vlm(args.seed, init_range=0.02)
    colors = ["red", "green", "blue", "yellow", "purple", "orange", "gray", "white"]
    samples = [
        Sample(f"p{i}", f"What is object {i}?", [Image.new("RGB", (56, 56), colors[i % 8])], Answers("x"))
        for i in range(args.prompts)
    ]
    delay = latency_fn(args.latency, args.dist, args.seed)
    thumbs = [
        Image.new("RGB", (56, 56), "black"),
        "Title A\n",
        Image.new("RGB", (56, 56), "white"),
        "Title B\n",
    ]
    tools = {
        "image_search": FakeTool(thumbs, delay_s=delay),
        "text_search": FakeTool(["Summary: the object is x.\n"], delay_s=delay),
    }

    def decide(req: GenerationRequest):
        path = PATHS[int(req.key.rsplit("#", 1)[1]) % len(PATHS)]
        return ("<reason>", "</reason>" + path[min(req.turn_index, len(path) - 1)])

    results = {}
    for schedule in ("async", "round_sync", "async"):  # async twice: the first run warms up
        engine = ForcedActionEngine(
            HFEngine(model, renderer),
            decide,
            renderer.encode,
            renderer.special.im_end,
            sampled_tokens=args.sampled_tokens,
        )
        calls: list[tuple[int, float]] = []
        inner_generate = engine.generate

        def timed(reqs, params, _inner=inner_generate, _calls=calls):
            t0 = time.perf_counter()
            out = _inner(reqs, params)
            _calls.append((len(reqs), time.perf_counter() - t0))
            return out

        engine.generate = timed  # type: ignore[method-assign]
        rcfg = RolloutConfig(
            max_new_tokens_per_turn=128,
            max_response_tokens=4096,
            schedule=schedule,
            max_batch_size=args.max_batch_size,
        )
        t = time.perf_counter()
        trajs = run_rollouts(
            samples,
            engine=engine,
            renderer=renderer,
            tools=tools,
            protocol=ProtocolConfig(),
            rollout=rcfg,
            params=SamplingParams(temperature=1.0, seed=args.seed),
            n=args.n,
        )
        wall = time.perf_counter() - t
        bound = max(tr.stats["gen_s"] + tr.stats["tool_s"] for tr in trajs)
        results[schedule] = {
            "wall_s": wall,
            "bound_s": bound,
            "turns": len(engine.inner_outputs),
            "gen_calls": len(calls),
            "gen_total_s": sum(d for _, d in calls),
            "finish": sorted({tr.finish_reason for tr in trajs}),
            "n": len(trajs),
        }
    a, r = results["async"], results["round_sync"]
    print(
        f"trajectories: {a['n']} ({args.prompts} prompts x {args.n}); tool latency {args.dist} mean {args.latency}s"
    )
    print("tools: in-process delayed fakes (no search service in this checkout)")
    for name, x in (("async", a), ("round_sync", r)):
        print(
            f"{name:11s} {x['turns']} turns in {x['gen_calls']} generate calls, {x['gen_total_s']:.3f} s generating"
        )
    print(f"async       wall {a['wall_s']:7.3f} s")
    print(
        f"bound       wall {a['bound_s']:7.3f} s   (longest trajectory: its generate calls + its tool waits)"
    )
    print(f"round_sync  wall {r['wall_s']:7.3f} s")
    print(f"async / bound = {a['wall_s'] / a['bound_s']:.3f} (target <= 1.25)")
    print(f"round_sync / async = {r['wall_s'] / a['wall_s']:.3f} (target >= 1.5)")
    print(
        json.dumps(
            {
                "trajectories": a["n"],
                "latency_mean_s": args.latency,
                "latency_dist": args.dist,
                "tools": "delayed in-process fakes",
                "async_wall_s": round(a["wall_s"], 4),
                "critical_path_bound_s": round(a["bound_s"], 4),
                "round_sync_wall_s": round(r["wall_s"], 4),
                "async_over_bound": round(a["wall_s"] / a["bound_s"], 4),
                "round_sync_over_async": round(r["wall_s"] / a["wall_s"], 4),
                "finish_reasons": a["finish"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
