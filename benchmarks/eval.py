"""Evaluation benchmark: judge throughput (cold vs cached) and `evaluate` wall time per policy on the tiny model.

Judge: `--judge-items` predictions judged by `LLMJudge` against an OpenAI-compatible server on 127.0.0.1 that
answers after `--latency` seconds, with `max_workers` 8: first with an empty SQLite cache (every item is a call),
then again (every item is a cache hit). Evaluate: `--samples` questions (56x56 images) on the tiny Qwen2.5-VL
built here, greedy, `--max-new-tokens` per turn, with in-process tools that return a thumbnail and a title (image)
or a summary (text) at once, for each policy (agent, direct, rag). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image


class _JudgeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    latency = 0.05

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        time.sleep(self.latency)
        verdict = "Yes" if "Predicted answer: ok" in prompt else "No"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": verdict}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def bench_judge(n: int, latency: float, tmp: Path) -> dict[str, float]:
    from mmsearch_r1.eval.judge import JudgeConfig, LLMJudge

    _JudgeHandler.latency = latency
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JudgeHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    items = [(f"question {i}?", [f"gold {i}"], "ok" if i % 2 else f"wrong {i}") for i in range(n)]
    out = {}
    try:
        for phase in ("cold", "cached"):
            judge = LLMJudge(
                JudgeConfig(model="m", base_url=url, api_key_env=None, cache_path=str(tmp / "judge.sqlite"))
            )
            t = time.perf_counter()
            verdicts = judge.judge_many(items)
            dt = time.perf_counter() - t
            assert sum(v.correct for v in verdicts) == n // 2
            out[f"judge_{phase}_items_per_s"] = n / dt
    finally:
        server.shutdown()
    return out


def bench_evaluate(n: int, max_new_tokens: int, tmp: Path) -> dict[str, float]:
    from mmsearch_r1.config import RolloutConfig
    from mmsearch_r1.eval import evaluate
    from mmsearch_r1.model import build_tiny_model, load_model, load_processor
    from mmsearch_r1.rollout.hf_engine import HFEngine
    from mmsearch_r1.rollout.testing import FakeTool
    from mmsearch_r1.types import Answers, ImageData, Sample

    model_dir = build_tiny_model(tmp / "tiny", seed=0)
    renderer = load_processor(model_dir)
    engine = HFEngine(load_model(model_dir), renderer)
    samples = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (56, 56), (40 * (i % 6), 90, 200 - 10 * (i % 9))).save(buf, format="PNG")
        samples.append(Sample(f"s{i}", f"What is shown in picture {i}?", [ImageData(bytes=buf.getvalue())],
                              Answers("a tower"), "bench"))  # fmt: skip
    tools = {
        "image_search": FakeTool([Image.new("RGB", (56, 56), "gray"), "Old tower - page title"]),
        "text_search": FakeTool(["1. The old tower was built in 1820. (http://local/tower)"]),
    }
    rollout = RolloutConfig(max_new_tokens_per_turn=max_new_tokens, max_batch_size=16)
    out = {}
    for policy in ("agent", "direct", "rag"):
        t = time.perf_counter()
        summary = evaluate(samples, engine=engine, renderer=renderer, tools=tools, out_dir=tmp / policy,
                           policy=policy, rollout=rollout)  # fmt: skip
        dt = time.perf_counter() - t
        out[f"eval_{policy}_s_per_question"] = dt / n
        out[f"eval_{policy}_turns_mean"] = summary["overall"]["turns_mean"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--judge-items", type=int, default=200)
    ap.add_argument("--latency", type=float, default=0.05, help="judge server latency per request (s)")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        figures = bench_judge(args.judge_items, args.latency, tmp)
        figures.update(bench_evaluate(args.samples, args.max_new_tokens, tmp))
    ideal = 8 / args.latency
    print(
        f"judge, {args.judge_items} items, {args.latency * 1000:.0f} ms per call, 8 workers (ideal {ideal:.0f}/s)"
    )
    print(f"  cold   {figures['judge_cold_items_per_s']:8.1f} items/s")
    print(f"  cached {figures['judge_cached_items_per_s']:8.1f} items/s")
    print(f"evaluate, {args.samples} questions, tiny model, greedy, {args.max_new_tokens} tokens per turn")
    for policy in ("agent", "direct", "rag"):
        s, turns = figures[f"eval_{policy}_s_per_question"], figures[f"eval_{policy}_turns_mean"]
        print(f"  {policy:6s} {s:6.3f} s/question  {turns:.2f} turns")
    print(json.dumps({k: round(v, 4) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
