"""Command-line entry point: `mmsearch-r1 <command> ...`.

Each command group lives in its own module under `mmsearch_r1.cli` and exposes
`register(subparsers) -> None`; the module must stay light at import time (heavy imports go inside the
handlers), so that `mmsearch-r1 --help` and the torch-free commands start fast. A handler is stored as
`func` on the parsed namespace and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

# Command modules in help order. A module that is not present is skipped.
COMMAND_MODULES = [
    "demo",
    "study",
    "world",
    "model",
    "data",
    "reward",
    "prompts",
    "search",
    "infer",
    "train",
    "plan",
    "sft",
    "eval",
    "report",
    "app",
]


def build_parser() -> argparse.ArgumentParser:
    from mmsearch_r1 import __version__

    parser = argparse.ArgumentParser(
        prog="mmsearch-r1",
        description="Train vision-language models with RL to search on demand.",
    )
    parser.add_argument("--version", action="version", version=f"mmsearch-r1 {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        modname = f"mmsearch_r1.cli.{name}"
        if importlib.util.find_spec(modname) is None:
            continue
        importlib.import_module(modname).register(sub)
    return parser


def setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, KeyError) as e:  # user-facing errors: one clear line, no traceback
        if args.verbose >= 2:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
