"""`mmsearch-r1 report RUN_DIR [--out DIR]`: markdown report with PNG plots from a run's metrics.jsonl."""

from __future__ import annotations

import argparse


def _report(args: argparse.Namespace) -> int:
    from mmsearch_r1.eval.report import render_report

    path = render_report(args.run_dir, args.out)
    print(f"report written to {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="render a markdown report with plots from a run directory's metrics")
    p.add_argument("run_dir", help="run directory holding metrics.jsonl")
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR/report)")
    p.set_defaults(func=_report)
