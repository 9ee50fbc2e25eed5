"""`mmsearch-r1 data ...`: inspect dataset files; convert a released image-search cache safely."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json


def _inspect(args: argparse.Namespace) -> int:
    from mmsearch_r1.data.summary import format_inspect, inspect_files

    info = inspect_files(args.files)
    print(json.dumps(info, indent=2) if args.json else format_inspect(info))
    return 0


def _convert_image_cache(args: argparse.Namespace) -> int:
    from mmsearch_r1.data.image_cache import convert_image_cache

    bad: list = []
    counts = convert_image_cache(args.input, args.out_dir, skip_bad=args.skip_bad, bad=bad)
    print(
        f"wrote {args.out_dir}/manifest.jsonl: {counts['keys']} keys, {counts['results']} results, "
        f"{counts['images']} thumbnail images, {counts['thumbnail_urls']} thumbnail urls"
        + (f", skipped {counts['skipped']} bad keys" if args.skip_bad else "")
    )
    for e in bad:
        print(f"  skipped {e}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    i = dsub.add_parser("inspect", help="rows, sources, categories, image and answer statistics")
    i.add_argument("files", nargs="+")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    i.set_defaults(func=_inspect)
    c = dsub.add_parser(
        "convert-image-cache", help="released image-search cache pickle -> manifest.jsonl + images (safe)"
    )
    c.add_argument("input", help="the .pkl file")
    c.add_argument("out_dir", help="replaced atomically, only when the whole conversion succeeds")
    c.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out (and list) keys that cannot be converted, else fail",
    )
    c.set_defaults(func=_convert_image_cache)
    # benchmark converters: `mmsearch_r1/cli/data_convert.py` defines add_convert_command(dsub)
    if importlib.util.find_spec("mmsearch_r1.cli.data_convert") is not None:
        importlib.import_module("mmsearch_r1.cli.data_convert").add_convert_command(dsub)
