"""`mmsearch-r1 demo [--out DIR] [--quick] [--seed N]`: world -> tiny model -> SFT -> eval -> GRPO with the
search penalty -> eval -> report, on the CPU with nothing downloaded (docs/demo.md)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

EXIT_CHECKS_FAILED = 3  # a default run finished but the expected effect did not show (docs/demo.md)

_TITLES = {
    "world": "1/7 build the world",
    "model": "2/7 build the tiny model",
    "sft": "3/7 SFT warm start",
    "eval_sft": "4/7 evaluate after SFT",
    "grpo": "5/7 GRPO with search penalty",
    "eval_grpo": "6/7 evaluate after GRPO",
    "report": "7/7 write the report",
}


def _demo(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from mmsearch_r1.world.demo import run_demo

    hf_logging.disable_progress_bar()  # the demo shows its own bars; no per-file save/load bars

    from mmsearch_r1.cli.progress import StageBars  # plain lines when stderr is not a terminal

    progress = StageBars(_TITLES, enabled=not args.no_progress)

    t0 = time.perf_counter()
    try:
        result = run_demo(
            args.out,
            seed=args.seed,
            quick=args.quick,
            config=args.config,
            overrides=args.set,
            progress=progress,
        )
    finally:
        progress.close()
    return print_outcome(
        result.summary,
        result.paths,
        quick=args.quick,
        elapsed=time.perf_counter() - t0,
        report=result.report_path,
        summary_path=result.summary_path,
    )


def print_outcome(
    s: dict,
    paths: dict,
    *,
    quick: bool,
    elapsed: float,
    report: object,
    summary_path: object,
    file: TextIO | None = None,
) -> int:
    """Print the closing table, the checks that failed (each with its figures) and the paths; return the exit
    status: 0, or EXIT_CHECKS_FAILED when a check failed in a default run (a quick run cannot show the effect,
    so its failed checks are listed but do not change the status)."""
    from mmsearch_r1.world.demo import CHECK_NAMES, failed_checks

    out = file or sys.stdout

    def say(line: str = "") -> None:
        print(line, file=out)

    say()
    say(f"mmsearch-r1 demo finished in {elapsed:.0f} s ({'quick' if quick else 'default'} run)")
    say()
    say(
        f"{'test questions':24s} {'accuracy SFT -> GRPO':>22s} {'search ratio SFT -> GRPO':>26s}"
        f" {'reward SFT -> GRPO':>20s}"
    )
    for g, label in (("head", "head (search-free)"), ("tail", "tail (search-required)"), ("all", "all")):
        b, a = s["before"][g], s["after"][g]
        say(
            f"{label:24s} {b['acc']:>10.1%} -> {a['acc']:>7.1%}   {b['search_ratio']:>12.1%} -> {a['search_ratio']:>7.1%}"
            f"   {b['reward']:>8.3f} -> {a['reward']:.3f}"
        )
    say()
    c = s["checks"]
    say(
        f"head search ratio change: {-c['head_search_drop_relative']:+.0%} relative; "
        f"tail search ratio after GRPO: {s['after']['tail']['search_ratio']:.0%}"
    )
    failed = failed_checks(s)
    say()
    if not failed:
        say("checks: all hold (summary.json: checks)")
    else:
        note = " (a quick run is a smoke run: it is not expected to show the effect)" if quick else ""
        say(f"checks FAILED: {len(failed)} of {len(CHECK_NAMES)}{note}")
        for line in failed:
            say(f"  - {line}")
    say()
    say(f"report:       {report}")
    say(f"summary:      {summary_path}")
    for key in ("curves", "before_after", "model_grpo", "world"):
        if key in paths:
            say(f"{key + ':':13s} {paths[key]}")
    return EXIT_CHECKS_FAILED if failed and not quick else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole system end to end on a CPU: learn to search on demand")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a smaller world and fewer steps (a smoke run)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the world, the model and training (default 0)"
    )
    p.add_argument("--config", default=None, metavar="YAML", help="settings instead of the built-in ones")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)
