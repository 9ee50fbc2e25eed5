"""`mmsearch-r1 search ...`: build local indexes and run the search tools by hand.

- `search index --pages PAGES.jsonl --images IMAGES.jsonl [--image-root DIR] --out DIR`: builds the BM25 text
  index into `DIR/text` and the image index into `DIR/image` (either input optional). Point a config at them
  with `text_backend: {type: local, index_dir: DIR}` and `image_backend: {type: local, index_dir: DIR}`.
- `search text "query" [--config YAML] [--index DIR] [--question Q] [--set k=v ...]`: runs the text search tool
  and prints the observation (titles, links, summaries) and its stats.
- `search image FILE [--config YAML] [--index DIR] [--key ID]`: runs the image search tool with FILE as the
  question image and prints the titles and thumbnail sizes. `--key` is the sample id replay backends look up.
- `search serve ...`: the search service, when `cli/search_serve.py` is installed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("search", help="build local search indexes, run the search tools")
    sub = p.add_subparsers(dest="search_command", metavar="SUBCOMMAND")

    ix = sub.add_parser("index", help="build the local BM25 text index and/or image index")
    ix.add_argument("--pages", metavar="PAGES.jsonl", help="pages, one JSON a line: url, title, text")
    ix.add_argument("--images", metavar="IMAGES.jsonl", help="images, one JSON a line: image, title, url")
    ix.add_argument(
        "--image-root", metavar="DIR", help="folder the image paths are relative to (default: the JSONL's)"
    )
    ix.add_argument(
        "--embedder",
        default="builtin",
        help="'builtin' or a JSON spec, e.g. '{\"type\": \"open_clip\", ...}'",
    )
    ix.add_argument("--out", required=True, metavar="DIR", help="output folder (text/ and image/ inside)")
    ix.set_defaults(func=_index)

    for name, helptext in (("text", "run the text search tool"), ("image", "run the image search tool")):
        s = sub.add_parser(name, help=helptext)
        if name == "text":
            s.add_argument("query", help="the search query")
            s.add_argument(
                "--question", default=None, help="question the summaries should answer (default: query)"
            )
        else:
            s.add_argument("file", help="the question image")
            s.add_argument(
                "--key", default=None, help="sample id for replay backends (default: the file's stem)"
            )
        s.add_argument("--config", metavar="YAML", help="a config file; its search section is used")
        s.add_argument("--index", metavar="DIR", help="use the local indexes in DIR (from `search index`)")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
        s.add_argument("--top-k", type=int, default=None, help="results to show (default: search.top_k)")
        s.set_defaults(func=_text if name == "text" else _image)

    if importlib.util.find_spec("mmsearch_r1.cli.search_serve") is not None:
        importlib.import_module("mmsearch_r1.cli.search_serve").add_serve_command(sub)

    def _help(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=_help)


def _index(args: argparse.Namespace) -> int:
    if not args.pages and not args.images:
        raise ValueError("search index: give --pages and/or --images")
    out = Path(args.out)
    if args.pages:
        from mmsearch_r1.search.local_text import build_text_index, read_pages

        n = len(read_pages(args.pages))
        build_text_index(args.pages, out / "text")
        print(f"text index: {n} pages -> {out / 'text'}")
    if args.images:
        from mmsearch_r1.search.local_image import build_image_index

        emb: Any = args.embedder
        if emb.strip().startswith("{"):
            try:
                emb = json.loads(emb)
            except json.JSONDecodeError as e:
                raise ValueError(f"--embedder: not valid JSON: {e}") from None
        d = build_image_index(args.images, out / "image", image_root=args.image_root, embedder=emb)
        meta = json.loads((d / "image_index.json").read_text())
        print(
            f"image index: {meta['n_items']} images, embedder {meta['embedder']['type']} dim {meta['dim']} -> {d}"
        )
    return 0


def _search_cfg(args: argparse.Namespace) -> Any:
    from mmsearch_r1.config_io import load_config

    cfg = load_config(args.config, args.set).search
    if args.index:
        cfg.text_backend = {"type": "local", "index_dir": args.index}
        cfg.image_backend = {"type": "local", "index_dir": args.index}
    if args.top_k is not None:
        cfg.top_k = args.top_k
    return cfg


def _print_stats(res: Any) -> None:
    stats = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.stats.items())
    print(f"-- ok={res.ok}" + (f" error={res.error}" if res.error else "") + f" | {stats}")


def _text(args: argparse.Namespace) -> int:
    from mmsearch_r1.tools import build_tools
    from mmsearch_r1.types import Answers, Sample

    tool = build_tools(_search_cfg(args))["text_search"]
    sample = Sample(id="cli", question=args.question or args.query, images=[], answers=Answers(""))
    res = tool(args.query, sample)
    print(res.text, end="")
    _print_stats(res)
    return 0 if res.ok else 1


def _image(args: argparse.Namespace) -> int:
    from mmsearch_r1.tools import build_tools
    from mmsearch_r1.types import Answers, ImageData, Sample

    path = Path(args.file)
    if not path.is_file():
        raise FileNotFoundError(f"image file {str(path)!r} not found")
    image = ImageData(bytes=path.read_bytes(), path=str(path))
    image.load()  # a clear error now if it is not an image
    tool = build_tools(_search_cfg(args))["image_search"]
    sample = Sample(id=args.key or path.stem, question="", images=[image], answers=Answers(""))
    res = tool(None, sample)
    for part in res.parts:
        print(part, end="") if isinstance(part, str) else print(
            f"[thumbnail {part.size[0]}x{part.size[1]}] ", end=""
        )
    _print_stats(res)
    return 0 if res.ok else 1
