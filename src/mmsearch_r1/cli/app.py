"""`mmsearch-r1 app [--model DIR] [--config CONFIG] [--search CONFIG] [--runs DIR] [--host H --port N]`: the web app.

Two tabs (docs/app.md): Ask (an image and a question through the agent loop, streamed turn by turn) and Runs
(a run directory's curves and saved trajectories). Defaults come from `runs/demo` when it exists (the demo's
GRPO model, its resolved config, its run directory); without a model the Ask tab says how to make one.
`--config` is a full config (its search, protocol, rollout and reward sections are used); `--search` replaces
its search section (a full config or a bare search section, as for `infer`). The app binds to loopback; another
host needs `--allow-remote` and prints a warning (there is no authentication).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("app", help="web app: ask with an image and watch the search; browse runs")
    p.add_argument(
        "--model", metavar="DIR", help="model directory (default: runs/demo/grpo/final if present)"
    )
    p.add_argument("--config", metavar="YAML", help="full config for the Ask tab (default: the demo's)")
    p.add_argument("--search", metavar="YAML", help="search config (full config or its search section)")
    p.add_argument("--no-search", action="store_true", help="Ask tab without search tools")
    p.add_argument("--runs", metavar="DIR", help="run directory opened in the Runs tab (default: runs/demo)")
    p.add_argument("--world", metavar="DIR", help="demo world whose test images are the examples")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (no auth!)")
    p.set_defaults(func=_app)


def _app(args: argparse.Namespace) -> int:
    import importlib.util

    from mmsearch_r1.app.server import AppSettings, check_host, demo_defaults, serve
    from mmsearch_r1.config import Config
    from mmsearch_r1.config_io import load_config

    warning = check_host(args.host, args.allow_remote)
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port}: not a port number")
    if importlib.util.find_spec("gradio") is None:
        print("error: the app needs Gradio: pip install 'mmsearch-r1[app]'", file=sys.stderr)
        return 1
    demo = demo_defaults()
    model = Path(args.model) if args.model else demo.get("model_dir")
    if model is not None and not model.is_dir():
        raise FileNotFoundError(f"--model {model}: no such directory")
    config_path = args.config or (demo.get("config") if not args.model else None)
    config = load_config(config_path) if config_path else Config()
    if args.search:
        from mmsearch_r1.cli.infer import load_search_config

        config.search = load_search_config(args.search)
    runs = Path(args.runs) if args.runs else demo.get("runs_dir")
    world = Path(args.world) if args.world else demo.get("world_dir")
    settings = AppSettings(
        model_dir=model,
        config=config,
        runs_dir=runs,
        world_dir=world,
        tools=not args.no_search,
        host=args.host,
        port=args.port,
    )
    if warning:
        print(warning, file=sys.stderr)
    print(
        f"mmsearch-r1 app: http://{args.host}:{args.port}/ (model: {model or 'none'}; runs: {runs or 'none'})"
    )
    sys.stdout.flush()
    serve(settings)
    return 0
