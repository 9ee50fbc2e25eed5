"""`evaluate(...)`: greedy rollouts, one per question, scored and summarized; the files are always written.

    summary = evaluate(samples, engine=..., renderer=..., tools=..., out_dir="runs/x/eval", policy="agent")

Steps: build the policy (`eval/policies.py`: agent, direct or rag) -> run the agent loop with greedy decoding
(`SamplingParams(greedy=True)`, n = 1) in chunks of `chunk_size` samples -> for each trajectory the outcome
reward (`reward.compute_reward` under the policy's protocol; EM or SubEM per `RewardConfig.mode`), EM and SubEM
of the final answer, and, with a judge, the judge's verdict -> `OUT/samples.jsonl` (one line per sample,
appended chunk by chunk, so a crash keeps what was done) -> `OUT/summary.json` and `OUT/summary.md`
(`eval/summary.py`). These files do not depend on any metric logger being on.

`evaluate_model(model_dir, data_files, ..., engine="hf"|"vllm"|None = rollout.engine)` loads the processor, data, generation engine
(`rollout.engines.build_engine`) and search tools first (the CLI and anyone with a checkpoint directory use it).
Samples whose gold answers are empty are rejected up front with their id.

Data parallel (`torchrun --nproc_per_node N -m mmsearch_r1.cli eval ...`): rank r evaluates samples r, r + N,
r + 2N, ... into `OUT/shards/rank{r}/`; the records are gathered to rank 0, which writes one `OUT/samples.jsonl`
in the original sample order and the summary over all of them (`n_samples` the total, `wall_s` the slowest
rank's, judge counters summed), then removes the shards. With greedy decoding each sample's result does not
depend on which rank ran it, so the files equal a single-process run's (wall time aside); tested with 2 ranks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmsearch_r1.config import ProtocolConfig, RewardConfig, RolloutConfig, SearchConfig
from mmsearch_r1.eval.policies import build_policy
from mmsearch_r1.eval.summary import sample_record, summarize, summary_markdown
from mmsearch_r1.reward import compute_reward
from mmsearch_r1.rollout.engine import Engine, SamplingParams
from mmsearch_r1.rollout.loop import run_rollouts
from mmsearch_r1.types import Sample

log = logging.getLogger(__name__)

# progress(done, total) after every chunk
Progress = Callable[[int, int], None]


def evaluate(
    samples: Sequence[Sample],
    *,
    engine: Engine,
    renderer: Any,
    tools: Mapping[str, Any],
    out_dir: str | Path,
    policy: str = "agent",
    protocol: ProtocolConfig | None = None,
    rollout: RolloutConfig | None = None,
    reward: RewardConfig | None = None,
    judge: Any = None,
    chunk_size: int = 64,
    progress: Progress | None = None,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate `samples` and write `out_dir/{samples.jsonl,summary.json,summary.md}`; returns the summary.

    `rollout` gives the token limits, batch size and prompt set of the agent policy (n and sampling are
    overridden: greedy, one response); `judge` is an `LLMJudge` or None; `info` is copied into the summary.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for s in samples:
        if not any(g.strip() for g in s.answers.all()):
            raise ValueError(f"sample {s.id!r} ({s.data_source}): no gold answers")
    rollout = rollout or RolloutConfig()
    reward = reward or RewardConfig()
    pol = build_policy(
        policy,
        engine=engine,
        renderer=renderer,
        tools=tools,
        protocol=protocol,
        prompt_set=rollout.prompt_set,
        answer_tokens=rollout.max_new_tokens_per_turn,
    )
    per_turn = max(rollout.max_new_tokens_per_turn, pol.min_turn_tokens)
    cfg = dataclasses.replace(rollout, n=1, prompt_set=pol.prompt_set, max_new_tokens_per_turn=per_turn)
    params = SamplingParams(temperature=0.0, greedy=True, seed=0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples_path = out / "samples.jsonl"
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    with samples_path.open("w", encoding="utf-8") as fh:
        for start in range(0, len(samples), chunk_size):
            chunk = list(samples[start : start + chunk_size])
            trajs = run_rollouts(
                chunk,
                engine=pol.engine,
                renderer=renderer,
                tools=pol.tools,
                protocol=pol.protocol,
                rollout=cfg,
                params=params,
                n=1,
            )
            rewards = [
                compute_reward(t.assistant_texts, s.answers, reward, pol.protocol)
                for s, t in zip(chunk, trajs, strict=True)
            ]
            verdicts: list[Any] = [None] * len(chunk)
            if judge is not None:
                from mmsearch_r1.protocol import extract_final_answer

                verdicts = judge.judge_many(
                    [
                        (
                            s.question,
                            s.answers.all(),
                            extract_final_answer(t.assistant_texts),
                            s.images[0] if s.images else None,
                        )
                        for s, t in zip(chunk, trajs, strict=True)
                    ]
                )
            for s, t, r, v in zip(chunk, trajs, rewards, verdicts, strict=True):
                rec = sample_record(s, t, r, v, policy=pol.name, profile=pol.protocol.profile)
                records.append(rec)
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()
            if progress is not None:
                progress(len(records), len(samples))
    extra = dict(info or {})
    extra.update(
        policy=pol.name,
        n_samples=len(records),
        wall_s=round(time.perf_counter() - t0, 3),
        protocol=dataclasses.asdict(pol.protocol),
        reward_mode=reward.mode,
    )
    if judge is not None:
        extra["judge"] = {
            "model": judge.cfg.model,
            "prompt_version": judge.prompt_version,
            "counters": judge.counters.snapshot(),
        }
    summary = summarize(records, **extra)
    (out / "summary.json").write_text(
        json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    log.info("evaluation of %d samples written to %s", len(records), out)
    return summary


def evaluate_model(
    model_dir: str | Path,
    data_files: Sequence[str | Path],
    *,
    out_dir: str | Path,
    policy: str = "agent",
    search: SearchConfig | None = None,
    protocol: ProtocolConfig | None = None,
    rollout: RolloutConfig | None = None,
    reward: RewardConfig | None = None,
    judge: Any = None,
    limit: int | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    skip_bad_rows: bool = False,
    chunk_size: int = 64,
    progress: Progress | None = None,
    engine: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> dict[str, Any]:
    """Load a checkpoint directory and parquet files, then `evaluate` (data parallel under torchrun; module
    docstring). `limit` keeps the first N of each file; `device` is the HF engine's (vLLM picks its own);
    `min_pixels` / `max_pixels` set the image processor's pixel budget (None: the checkpoint's own)."""
    from mmsearch_r1.data.reader import read_samples
    from mmsearch_r1.model import load_model, load_processor
    from mmsearch_r1.rl import distributed as D
    from mmsearch_r1.rollout.engines import build_engine, check_engine

    if not data_files:
        raise ValueError("no data files given")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    samples: list[Sample] = []
    skipped = 0
    for f in data_files:
        res = read_samples(f, skip_bad_rows=skip_bad_rows)
        skipped += res.n_skipped
        samples += res.samples[:limit] if limit is not None else res.samples
    if not samples:
        raise ValueError(f"no samples in {', '.join(map(str, data_files))}")
    rollout = rollout or RolloutConfig()
    if engine is not None:  # else rollout.engine
        rollout = dataclasses.replace(rollout, engine=engine)
    check_engine(rollout, sampling=False)
    import torch.distributed

    owned = not torch.distributed.is_initialized()  # a process group we start, we also end
    dist = D.init_distributed()
    renderer = load_processor(model_dir, min_pixels, max_pixels)
    model = load_model(model_dir, dtype=dtype, device=device) if rollout.engine == "hf" else None
    gen = build_engine(rollout, renderer, model=model, model_path=str(model_dir), dtype=dtype)
    tools: dict[str, Any] = {}
    if policy != "direct":  # after the engine: vLLM failed to start with numba (bm25s) imported first
        from mmsearch_r1.tools import build_tools

        tools = dict(build_tools(search or SearchConfig()))
    info = {"model": str(model_dir), "data_files": [str(f) for f in data_files], "skipped_rows": skipped}
    out = Path(out_dir)
    shard_dir = out / "shards" / f"rank{dist.rank}" if dist.enabled else out
    summary = evaluate(
        samples[dist.rank :: dist.world_size],
        engine=gen,
        renderer=renderer,
        tools=tools,
        out_dir=shard_dir,
        policy=policy,
        protocol=protocol,
        rollout=rollout,
        reward=reward,
        judge=judge,
        chunk_size=chunk_size,
        progress=progress,
        info=info,
    )
    if hasattr(gen, "close"):
        gen.close()
    if not dist.enabled:
        return summary
    summary = merge_shards(out, shard_dir, summary, dist)
    if owned:  # left to interpreter exit, gloo's threads can abort the process
        D.shutdown(dist)
    return summary


def merge_shards(out: Path, shard_dir: Path, summary: dict[str, Any], dist: Any) -> dict[str, Any]:
    """Gather every rank's records to rank 0 and write the merged files there (module docstring)."""
    import shutil

    from mmsearch_r1.rl import distributed as D

    with (shard_dir / "samples.jsonl").open(encoding="utf-8") as fh:
        mine = [json.loads(line) for line in fh if line.strip()]
    parts = D.all_gather_objects(mine, dist)
    summaries = D.all_gather_objects(summary, dist)
    if dist.is_main:
        records = [parts[i % dist.world_size][i // dist.world_size] for i in range(sum(map(len, parts)))]
        skip = {"overall", "by_source", "by_category", "by_source_category"}
        extra = {k: v for k, v in summary.items() if k not in skip}
        extra.update(n_samples=len(records), wall_s=max(s["wall_s"] for s in summaries))
        if "judge" in extra:
            counters: dict[str, Any] = {}
            for s in summaries:
                for k, v in s["judge"]["counters"].items():
                    counters[k] = counters.get(k, 0) + v if isinstance(v, (int, float)) else v
            extra["judge"] = {**extra["judge"], "counters": counters}
        merged = summarize(records, **extra)
        tmp = out / "samples.jsonl.tmp"
        with tmp.open("w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        tmp.replace(out / "samples.jsonl")
        (out / "summary.json").write_text(
            json.dumps(merged, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        (out / "summary.md").write_text(summary_markdown(merged), encoding="utf-8")
        summary = merged
    D.barrier(dist)
    if dist.is_main:
        shutil.rmtree(out / "shards", ignore_errors=True)
    return D.all_gather_objects(summary, dist)[0]
