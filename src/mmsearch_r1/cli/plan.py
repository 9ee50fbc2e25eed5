"""`mmsearch-r1 plan CONFIG [a.b=c ...] [--gpus N] [--gpu-mem-gb G] [--params N]`: per-rank GPU memory of a run.

Prints the table of `rl.memory_plan` (component, GiB, phase, exact or estimate) and whether it fits; exit code 0
when it fits (or no GPU size was given), 3 when it does not. `--json` prints one JSON object instead.
"""

from __future__ import annotations

import argparse
import os

NO_FIT_EXIT = 3


def _plan(args: argparse.Namespace) -> int:
    from mmsearch_r1.config_io import load_config
    from mmsearch_r1.rl.memory_plan import plan_memory

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not os.path.isfile(config):
        config, overrides = None, [config, *overrides]
    cfg = load_config(config, overrides)
    if args.model_dir:
        cfg.model.path = args.model_dir
    plan = plan_memory(cfg, args.gpus, args.gpu_mem_gb, params=args.params)
    print(plan.to_json() if args.json else plan.table())
    return NO_FIT_EXIT if plan.fits is False else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="per-GPU memory of a training run, by component, and whether it fits")
    p.add_argument("config", nargs="?", default=None, help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="a.b=c overrides")
    p.add_argument("--gpus", type=int, default=1, help="number of processes, one GPU each (default 1)")
    p.add_argument("--gpu-mem-gb", type=float, default=None, help="memory of one GPU in GiB (e.g. 80)")
    p.add_argument(
        "--params", type=float, default=None, help="parameter count (e.g. 7.6e9) instead of the model's"
    )
    p.add_argument(
        "--model-dir", default=None, help="a local model directory to size (instead of model.path)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    p.set_defaults(func=_plan)
