"""`mmsearch-r1 search serve --config YAML`: run the search service (FastAPI on uvicorn).

Options: `--host` (default 127.0.0.1), `--port` (default 8000), `--token-env NAME` (environment variable holding
the bearer token; default MMSEARCH_R1_SEARCH_TOKEN; unset -> no auth), `--max-request-bytes`, `--workers`
(threads for blocking backend calls), `--set key=value` overrides, `--no-text` / `--no-image` to serve one tool.
Slow or idle clients: `--header-timeout-s` (default 10: a request head must arrive within it, also the next one
on a kept-alive connection), `--body-timeout-s` (default 30: the whole body, else 408), `--idle-timeout-s`
(default 5: an idle kept-alive connection is closed), `--max-connections` (default 256: connections beyond it
are closed on accept).
Binding a non-loopback address without a token prints a warning. The token is never printed.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from typing import Any

DEFAULT_TOKEN_ENV = "MMSEARCH_R1_SEARCH_TOKEN"


def add_serve_command(search_subparsers: Any) -> None:
    """Add `serve` to the `search` command group (called by `cli/search.py`)."""
    s = search_subparsers.add_parser("serve", help="run the search service (HTTP, FastAPI + uvicorn)")
    s.add_argument("--config", metavar="YAML", help="a config file; its search section is served")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument(
        "--token-env",
        default=DEFAULT_TOKEN_ENV,
        metavar="NAME",
        help=f"environment variable with the bearer token (default {DEFAULT_TOKEN_ENV}; unset = no auth)",
    )
    s.add_argument("--max-request-bytes", type=int, default=16 * 1024 * 1024, help="request body limit")
    s.add_argument("--workers", type=int, default=32, help="threads for blocking backend calls")
    s.add_argument(
        "--header-timeout-s",
        type=float,
        default=10.0,
        help="a request head must arrive within this (default 10)",
    )
    s.add_argument(
        "--body-timeout-s",
        type=float,
        default=30.0,
        help="a request body must arrive within this (default 30)",
    )
    s.add_argument(
        "--idle-timeout-s",
        type=float,
        default=5.0,
        help="close an idle kept-alive connection after (default 5)",
    )
    s.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="open connections beyond this are closed (default 256)",
    )
    s.add_argument("--no-text", action="store_true", help="do not serve text search")
    s.add_argument("--no-image", action="store_true", help="do not serve image search")
    s.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    s.set_defaults(func=_serve)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _serve(args: argparse.Namespace) -> int:
    from mmsearch_r1.config_io import load_config
    from mmsearch_r1.search.service import create_app_from_config
    from mmsearch_r1.search.service_support import service_server

    if not 0 < args.port < 65536:
        raise ValueError(f"--port: must be 1..65535, got {args.port}")
    for name in ("header_timeout_s", "body_timeout_s", "idle_timeout_s"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')}: must be > 0, got {getattr(args, name)}")
    if args.max_connections < 1:
        raise ValueError(f"--max-connections: must be >= 1, got {args.max_connections}")
    if args.no_text and args.no_image:
        raise ValueError("search serve: --no-text and --no-image leave nothing to serve")
    token = os.environ.get(args.token_env) if args.token_env else None
    if not is_loopback(args.host) and not token:
        print(
            f"warning: binding {args.host} (not loopback) without a token: anyone who can reach it can "
            f"spend your search credits; set ${args.token_env}",
            file=sys.stderr,
        )
    cfg = load_config(args.config, args.set).search
    app = create_app_from_config(
        cfg,
        token=token,
        max_request_bytes=args.max_request_bytes,
        body_timeout_s=args.body_timeout_s,
        workers=args.workers,
        text=not args.no_text,
        image=not args.no_image,
    )
    print(
        f"search service on http://{args.host}:{args.port} "
        f"(auth: {'bearer token from $' + args.token_env if token else 'none'})",
        file=sys.stderr,
    )
    service_server(
        app,
        host=args.host,
        port=args.port,
        header_timeout_s=args.header_timeout_s,
        idle_timeout_s=args.idle_timeout_s,
        max_connections=args.max_connections,
        log_level=args.log_level,
    ).run()
    return 0
