"""`mmsearch-r1 train CONFIG [a.b=c ...] [--resume]`: GRPO training (docs/training.md).

Multi-process: `torchrun --nproc_per_node N -m mmsearch_r1.cli train CONFIG ...` (any torchrun flags).
`--print-config` prints the resolved config as YAML (after the legacy-key warnings) and exits before loading
anything, so a launch line can be checked in a second. With `trainer.val_only=true` the starting policy is only
evaluated on `data.val_files` and every generation is saved (`rl/val_only.py`).
"""

from __future__ import annotations

import argparse
import os
import sys


def _train(args: argparse.Namespace) -> int:
    from mmsearch_r1.config_io import load_config

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not os.path.isfile(config):  # overrides only, no YAML
        config, overrides = None, [config, *overrides]
    cfg = load_config(config, overrides)
    if args.print_config:
        import yaml

        from mmsearch_r1.config_io import config_to_dict

        sys.stdout.write(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False))
        return 0
    from mmsearch_r1.rl.memory_plan import check_before_train

    check_before_train(cfg, args.gpu_mem_gb, args.ignore_memory_plan)  # docs/memory.md
    from mmsearch_r1.rl.trainer import train

    main = int(os.environ.get("RANK", "0")) == 0
    bar = None
    from mmsearch_r1.cli.progress import progress_bar as tqdm  # plain lines when stderr is not a terminal

    def progress(step: int, total: int, metrics: dict[str, float]) -> None:
        nonlocal bar
        if tqdm is None or args.no_progress or not main:
            return
        if bar is None:
            bar = tqdm(total=total, initial=step - 1, desc="train", unit="step", file=sys.stderr)
        bar.set_postfix(
            reward=f"{metrics.get('reward/mean', 0.0):.3f}",
            search=f"{metrics.get('search/ratio_any', 0.0):.2f}",
            lr=f"{metrics.get('actor/lr', 0.0):.1e}",
        )
        bar.update(1)

    try:
        result = train(cfg, resume=args.resume, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if main and cfg.trainer.val_only:
        from mmsearch_r1.rl.val_only import save_dir_for

        print(
            f"evaluated only; metrics: {result.metrics_path}; generations: {save_dir_for(cfg, result.run_dir)}"
        )
        return 0
    if main:
        print(f"trained {result.steps} steps; metrics: {result.metrics_path}")
        if result.final_dir is not None:
            print(f"final policy: {result.final_dir}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="GRPO training with search tools (torchrun for several processes)")
    p.add_argument("config", nargs="?", default=None, help="YAML config (see configs/); may be left out")
    p.add_argument("overrides", nargs="*", help="a.b=c overrides, e.g. trainer.total_steps=10")
    p.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in trainer.run_dir"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (YAML) and exit before loading a model",
    )
    p.add_argument(
        "--gpu-mem-gb",
        type=float,
        default=None,
        help="GiB per GPU for the memory plan (default: the CUDA device's; no check on CPU without it)",
    )
    p.add_argument(
        "--ignore-memory-plan", action="store_true", help="start even if the memory plan says it cannot fit"
    )
    p.set_defaults(func=_train)
