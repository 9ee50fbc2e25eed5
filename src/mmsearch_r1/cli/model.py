"""`mmsearch-r1 model tiny`: build the offline tiny Qwen2.5-VL."""

from __future__ import annotations

import argparse


def _tiny(args: argparse.Namespace) -> int:
    from mmsearch_r1.model.tiny import TinySizes, build_tiny_model

    sizes = TinySizes(vocab_size=args.vocab_size, hidden=args.hidden, layers=args.layers)
    out = build_tiny_model(args.out, seed=args.seed, corpus=args.corpus, sizes=sizes)
    print(f"tiny model written to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="model utilities")
    msub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    t = msub.add_parser("tiny", help="build a tiny Qwen2.5-VL offline and deterministically")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--corpus", default=None, help="extra text file for the tokenizer")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--vocab-size", type=int, default=2048)
    t.add_argument("--hidden", type=int, default=128)
    t.add_argument("--layers", type=int, default=2)
    t.set_defaults(func=_tiny)
