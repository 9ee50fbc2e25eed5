"""`mmsearch-r1 world build --out DIR [--seed N] [--size small|default]`: write a procedural search world
(questions, web pages, image index, search config, tokenizer corpus, SFT conversations; docs/demo.md)."""

from __future__ import annotations

import argparse
import sys


def _build(args: argparse.Namespace) -> int:
    from mmsearch_r1.world.build import build_world

    bars: dict[str, object] = {}
    from mmsearch_r1.cli.progress import progress_bar as tqdm  # plain lines when stderr is not a terminal

    def progress(stage: str, done: int, total: int) -> None:
        if tqdm is None or args.no_progress:
            return
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="item", file=sys.stderr, leave=False)
        bar.n = done  # type: ignore[attr-defined]
        bar.refresh()  # type: ignore[attr-defined]

    try:
        world = build_world(args.out, seed=args.seed, size=args.size, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()  # type: ignore[attr-defined]
    c = world.counts
    print(f"world (seed {world.seed}, size {world.size}) written to {world.root}")
    print(f"  entities: {c['entities']['head']} head, tail {c['entities']['tail']}")
    for split, n in c["questions"].items():
        print(f"  {split:5s} questions: {n}")
    print(f"  SFT conversations: {c['sft']}  -> {world.sft_conversations}")
    print(f"  search config: {world.search_config}")
    print(f"  tokenizer corpus: {world.tokenizer_corpus}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("world", help="build the procedural search world used by the demo")
    wsub = p.add_subparsers(dest="world_command", metavar="SUBCOMMAND")
    b = wsub.add_parser("build", help="write a world (deterministic by seed)")
    b.add_argument("--out", required=True, metavar="DIR", help="output folder")
    b.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    b.add_argument("--size", choices=("small", "default"), default="default", help="world size")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    b.set_defaults(func=_build)
