"""`mmsearch-r1 prompts import-original DIR OUT`: a prompt set from the original's three prompt pickles.

DIR is the `mmsearch_r1/prompts` directory of your copy of the original; OUT becomes a prompt-set directory to
use with `rollout.prompt_set=OUT` (a path with a `/`, e.g. `./prompts/original`). Each pickle must hold one
`str`; anything else is refused without running it (`prompt_layout.load_prompt_pickle`). The two sentences the
original's rollout code (not its prompt files) writes around search results are passed with
`--results-lead-in` and `--question-label`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("prompts", help="prompt sets: import the original's prompt files")
    sub = p.add_subparsers(dest="prompts_command", metavar="SUBCOMMAND")
    s = sub.add_parser("import-original", help="write a prompt set from the original's three prompt pickles")
    s.add_argument("src", metavar="DIR", help="directory holding the original's *_qwenvl.pkl prompt files")
    s.add_argument("out", metavar="OUT", help="prompt-set directory to write")
    s.add_argument("--results-lead-in", default="", help="text before <information> in a tool turn")
    s.add_argument("--question-label", default="", help="text before the repeated question in a tool turn")
    s.set_defaults(func=_import)

    def _help(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=_help)


def _import(args: argparse.Namespace) -> int:
    from mmsearch_r1.prompt_layout import PromptImportError, import_original

    try:
        out = import_original(
            args.src, args.out, results_lead_in=args.results_lead_in, question_label=args.question_label
        )
    except PromptImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"prompt set written to {out}; use rollout.prompt_set={out if '/' in str(out) else './' + str(out)}"
    )
    return 0
