"""`mmsearch-r1 eval --model DIR --data FILE... [--policy agent|direct|rag] [--search CONFIG] [--judge CONFIG]`.

Greedy decoding, one response per question, any number of parquet files (released schema). Always writes
`OUT/samples.jsonl`, `OUT/summary.json` and `OUT/summary.md` (see docs/eval.md) and prints the markdown summary.
`--config` takes a full training config (its protocol, rollout, reward and search sections are used);
`--search` (a full config or a bare search section) overrides its search section. `--judge` is a YAML file with
the judge's `model`, `base_url`, `api_key_env`, `cache_path`, ... (`eval.judge.JudgeConfig`).
`--engine hf|vllm` picks the generation engine (default: the config's `rollout.engine`, else hf).

Data parallel: `torchrun --nproc_per_node N -m mmsearch_r1.cli eval ...` gives each rank a shard and writes one
merged `samples.jsonl` and summary (eval/evaluate.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

POLICIES = ("agent", "direct", "rag")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("eval", help="evaluate a model (or a baseline policy) on parquet files")
    p.add_argument("--model", required=True, metavar="DIR", help="model directory (HF format)")
    p.add_argument("--data", required=True, nargs="+", metavar="FILE", help="parquet files (released schema)")
    p.add_argument("--out", metavar="DIR", help="output directory (default runs/eval/<model>-<policy>)")
    p.add_argument("--policy", default="agent", choices=POLICIES, help="agent (default), direct or rag")
    p.add_argument("--config", metavar="CONFIG_YAML", help="full config: protocol, rollout, reward, search")
    p.add_argument(
        "--search", metavar="CONFIG_YAML", help="search config (full config or its search section)"
    )
    p.add_argument(
        "--judge", metavar="JUDGE_YAML", help="LLM judge config (model, base_url, api_key_env, ...)"
    )
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N samples of each file")
    p.add_argument("--max-new-tokens", type=int, default=None, help="per-turn token limit (default: config)")
    p.add_argument("--chunk-size", type=int, default=64, help="samples per rollout batch (default 64)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu", help="device of the hf engine (vLLM picks its own)")
    p.add_argument(
        "--engine", choices=["hf", "vllm"], default=None, help="default: rollout.engine of --config"
    )
    p.add_argument("--skip-bad-rows", action="store_true", help="skip unreadable rows instead of failing")
    add_pixel_args(p, "data.min_pixels / data.max_pixels of --config, else the model's own")
    p.set_defaults(func=_eval)


def add_pixel_args(p: argparse.ArgumentParser, default: str) -> None:
    """--min-pixels / --max-pixels: the image processor's pixel budget (docs/memory.md)."""
    for name in ("min", "max"):
        p.add_argument(f"--{name}-pixels", type=int, default=None, metavar="N", help=f"default: {default}")


def pixel_budget(args: argparse.Namespace, cfg_min: int | None, cfg_max: int | None) -> tuple:
    """(min_pixels, max_pixels) from the flags, else the config's; a bad value names its flag."""
    lo = args.min_pixels if args.min_pixels is not None else cfg_min
    hi = args.max_pixels if args.max_pixels is not None else cfg_max
    for flag, v in (("--min-pixels", lo), ("--max-pixels", hi)):
        if v is not None and v <= 0:
            raise ValueError(f"{flag} must be > 0, got {v}")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"--min-pixels={lo} must be <= --max-pixels={hi}")
    return lo, hi


def _eval(args: argparse.Namespace) -> int:
    import dataclasses
    import os

    from mmsearch_r1.cli.progress import progress_bar as tqdm  # plain lines when stderr is not a terminal
    from mmsearch_r1.config import Config
    from mmsearch_r1.eval.evaluate import evaluate_model

    for f in args.data:
        if not Path(f).is_file():
            raise FileNotFoundError(f"--data {f}: no such file")
    if args.config:
        from mmsearch_r1.config_io import load_config

        cfg = load_config(args.config)
    else:
        cfg = Config()
    search = cfg.search
    if args.search:
        from mmsearch_r1.cli.infer import load_search_config

        search = load_search_config(args.search)
    pixels = pixel_budget(args, cfg.data.min_pixels, cfg.data.max_pixels)
    rollout = cfg.rollout if args.engine is None else dataclasses.replace(cfg.rollout, engine=args.engine)
    from mmsearch_r1.rollout.engines import check_engine

    check_engine(rollout, sampling=False)  # before any model loads
    if args.max_new_tokens is not None:
        if args.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
        rollout = dataclasses.replace(rollout, max_new_tokens_per_turn=args.max_new_tokens)
    judge = None
    if args.judge:
        from mmsearch_r1.eval.judge import LLMJudge, load_judge_config

        judge = LLMJudge(load_judge_config(args.judge))
    out = Path(args.out) if args.out else Path("runs") / "eval" / f"{Path(args.model).name}-{args.policy}"

    main = int(os.environ.get("RANK", "0")) == 0
    bar = tqdm(
        total=None, unit="q", desc=f"eval ({args.policy})", file=sys.stderr, disable=None if main else True
    )

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        summary = evaluate_model(
            args.model,
            args.data,
            out_dir=out,
            policy=args.policy,
            search=search,
            protocol=cfg.protocol,
            rollout=rollout,
            reward=cfg.reward,
            judge=judge,
            limit=args.limit,
            dtype=args.dtype,
            device=args.device,
            skip_bad_rows=args.skip_bad_rows,
            chunk_size=args.chunk_size,
            min_pixels=pixels[0],
            max_pixels=pixels[1],
            progress=progress,
            engine=rollout.engine,
        )
    finally:
        bar.close()
    if not main:
        return 0
    print((out / "summary.md").read_text(encoding="utf-8"))
    print(
        f"wrote {out / 'samples.jsonl'} ({summary['n_samples']} samples), {out / 'summary.json'}, {out / 'summary.md'}"
    )
    return 0
