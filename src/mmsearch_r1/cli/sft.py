"""`mmsearch-r1 sft CONFIG [a.b=c ...]`: supervised warm start on conversations (docs/sft.md).

Multi-process: `torchrun --nproc_per_node N -m mmsearch_r1.cli sft CONFIG ...`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _sft(args: argparse.Namespace) -> int:
    from mmsearch_r1.config_io import load_config
    from mmsearch_r1.rl.sft import run_sft

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).is_file():  # no config file, only overrides
        config, overrides = None, [config, *overrides]
    cfg = load_config(config, overrides)
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    bar = None
    from mmsearch_r1.cli.progress import progress_bar as tqdm  # plain lines when stderr is not a terminal

    def progress(step: int, total: int, metrics: dict[str, float]) -> None:
        nonlocal bar
        if tqdm is None or args.no_progress or not main:
            return
        if bar is None:
            bar = tqdm(total=total, desc="sft", unit="step", file=sys.stderr)
        bar.set_postfix(loss=f"{metrics['sft/loss']:.4f}", lr=f"{metrics['sft/lr']:.2e}")
        bar.update(1)

    try:
        result = run_sft(cfg, progress=progress, resume=args.resume)
    finally:
        if bar is not None:
            bar.close()
    if not main:
        return 0
    print(
        f"SFT: {result.steps} steps on {result.n_conversations} conversations, last loss {result.final_loss:.4f}"
    )
    print(f"metrics: {result.metrics_path}")
    print(f"model:   {result.final_dir}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sft", help="supervised warm start on multi-turn conversations with images")
    p.add_argument(
        "config",
        nargs="?",
        default=None,
        help="YAML config (sft.*, model.*, optim.* sections); may be left out when overrides say it all",
    )
    p.add_argument("overrides", nargs="*", help="a.b=c overrides, e.g. sft.max_steps=100")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in sft.run_dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_sft)
