"""`mmsearch-r1 data convert --format fvqa|infoseek|mmsearch|simplevqa|livevqa IN... --out OUT.parquet`.

Benchmark files as released -> our parquet schema (see `mmsearch_r1.data.convert` for each layout). Registered
under the `data` command by `cli/data.py`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

FORMATS = ("fvqa", "infoseek", "mmsearch", "simplevqa", "livevqa")


def add_convert_command(dsub: Any) -> None:
    c = dsub.add_parser("convert", help="convert a public benchmark's released files to our parquet schema")
    c.add_argument("--format", required=True, choices=FORMATS, help="which benchmark the inputs come from")
    c.add_argument("inputs", nargs="+", metavar="IN", help=".parquet, .jsonl or .json files as released")
    c.add_argument("--out", required=True, metavar="OUT.parquet")
    c.add_argument("--images-dir", metavar="DIR", help="where image files named by the records live")
    c.add_argument(
        "--data-source", metavar="NAME", help="data_source to write (default: the benchmark's name)"
    )
    c.add_argument("--limit", type=int, default=None, metavar="N", help="convert at most N samples")
    c.add_argument(
        "--skip-bad-rows", action="store_true", help="skip (and list) rows that cannot be converted"
    )
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    from mmsearch_r1.data.convert import convert

    report = convert(
        args.format,
        args.inputs,
        args.out,
        images_dir=args.images_dir,
        data_source=args.data_source,
        limit=args.limit,
        skip_bad_rows=args.skip_bad_rows,
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    print(f"wrote {args.out}: {report.written} samples ({report.read} records read)")
    for reason, n in sorted(report.skipped.items()):
        print(f"  skipped {n}: {reason}")
    for e in report.errors[:10]:
        print(f"  {e}")
    return 0
