"""`mmsearch-r1 study [--seeds 0,1,2] [--quick] [--out runs/study]`: the paper's comparison (direct answer, RAG
workflow, SFT agent, GRPO) and its search-penalty ablation on the demo's world, over seeds; resumable
(docs/study.md)."""

from __future__ import annotations

import argparse
import time


def _study(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from mmsearch_r1.cli.progress import StageBars  # plain lines when stderr is not a terminal
    from mmsearch_r1.world.study import parse_seeds, run_study
    from mmsearch_r1.world.study_report import ARM_LABEL, CLAIM_TEXT

    seeds = parse_seeds(args.seeds)
    hf_logging.disable_progress_bar()
    progress = StageBars(enabled=not args.no_progress)

    t0 = time.perf_counter()
    try:
        study = run_study(args.out, seeds=seeds, quick=args.quick, overrides=args.set, progress=progress)
    finally:
        progress.close()
    print()
    print(f"mmsearch-r1 study finished in {time.perf_counter() - t0:.0f} s (seeds {args.seeds})")
    print()
    print(f"{'arm':48s} {'acc head/tail/all':>22s} {'search head/tail/all':>24s}")
    for arm, label in ARM_LABEL.items():
        a = study["aggregate"].get(arm)
        if a is None:
            continue
        acc = "/".join(f"{100 * a[g]['acc']['mean']:.0f}" for g in ("head", "tail", "all"))
        sr = "/".join(f"{100 * a[g]['search_ratio']['mean']:.0f}" for g in ("head", "tail", "all"))
        print(f"{label:48s} {acc:>22s} {sr:>24s}")
    print()
    for name, c in study["claims"].items():
        print(f"{'holds  ' if c['holds'] else 'FAILS  '} {CLAIM_TEXT[name]}")
    print()
    print(f"report: {study['paths']['report']}")
    print(f"study:  {args.out}/study.json")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study", help="direct, RAG, SFT agent and GRPO with/without search penalty, over seeds"
    )
    p.add_argument("--seeds", default="0,1,2", metavar="LIST", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--quick", action="store_true", help="the demo's quick settings (a smoke run)")
    p.add_argument("--out", default="runs/study", metavar="DIR", help="output folder (default runs/study)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override (all arms)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_study)
