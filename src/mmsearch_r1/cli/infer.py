"""`mmsearch-r1 infer --model DIR --image FILE_OR_URL --question "..."`: one agent rollout, shown turn by turn.

Prints each assistant turn, the action taken, the tool call with its results (thumbnails by title and size),
and the finish reason; `--out FILE.json` also writes the trajectory's JSON export (`Trajectory.to_json`).
`--search CONFIG.yaml` is either a full config file (its `search:` section is used) or a bare search section
(`text_backend`, `image_backend`, `top_k`, ...); without it the local backends of the default `SearchConfig`
are used. `--no-search` runs with no tools (searches are answered with a tool error). An image URL is fetched
through the SSRF guard (public addresses only, 20 MB cap). Decoding is greedy unless `--temperature` > 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

MAX_IMAGE_BYTES = 20 * 1024 * 1024


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("infer", help="answer one question about an image with the agent loop")
    p.add_argument("--model", required=True, metavar="DIR", help="model directory (HF format)")
    p.add_argument(
        "--image", required=True, metavar="FILE_OR_URL", help="question image (path or http(s) URL)"
    )
    p.add_argument("--question", required=True, help="the question")
    p.add_argument(
        "--search", metavar="CONFIG_YAML", help="search config (full config or its search section)"
    )
    p.add_argument("--no-search", action="store_true", help="no tools")
    p.add_argument("--out", metavar="FILE.json", help="write the trajectory as JSON")
    p.add_argument("--max-turns", type=int, default=None, help="assistant turn limit (default 3)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="per-turn token limit (default 512)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu", help="device of the hf engine (vLLM picks its own)")
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="generation engine (default hf)")
    p.add_argument("--prompt-set", default="default", help="prompt set name or directory")
    from mmsearch_r1.cli.eval import add_pixel_args

    add_pixel_args(p, "the model's own")
    p.set_defaults(func=_infer)


def load_search_config(path: str) -> Any:
    """A `SearchConfig` from a full config YAML or a bare search section. Unknown keys are an error."""
    import dataclasses

    import yaml

    from mmsearch_r1.config import SearchConfig

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"--search {path}: expected a mapping at the top level")
    if "search" in data:
        from mmsearch_r1.config_io import load_config

        return load_config(path).search
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"--search {path}: unknown search key(s) {unknown}; known: {sorted(known)}")
    return SearchConfig(**data)


def load_image(spec: str) -> Any:
    from mmsearch_r1.types import ImageData

    if spec.startswith(("http://", "https://")):
        import httpx

        from mmsearch_r1.search.ssrf import GuardedTransport, UrlPolicy, check_url

        policy = UrlPolicy.make()
        check_url(spec, policy)
        with httpx.Client(transport=GuardedTransport(policy), timeout=30.0, follow_redirects=False) as client:
            resp = client.get(spec)
        if resp.status_code != 200:
            raise ValueError(f"--image {spec}: HTTP {resp.status_code}")
        if len(resp.content) > MAX_IMAGE_BYTES:
            raise ValueError(f"--image {spec}: larger than {MAX_IMAGE_BYTES} bytes")
        img = ImageData(bytes=resp.content, url=spec)
    else:
        if not Path(spec).is_file():
            raise FileNotFoundError(f"--image {spec}: no such file")
        img = ImageData(bytes=Path(spec).read_bytes(), path=spec)
    img.load()  # fail here, with the file named, if it is not an image
    return img


def _infer(args: argparse.Namespace) -> int:
    import torch

    from mmsearch_r1.config import ProtocolConfig, RolloutConfig, SearchConfig
    from mmsearch_r1.model import load_model, load_processor
    from mmsearch_r1.rollout.engine import SamplingParams
    from mmsearch_r1.rollout.engines import build_engine, check_engine
    from mmsearch_r1.rollout.loop import run_rollouts
    from mmsearch_r1.types import Answers, Sample

    check_engine(
        RolloutConfig(engine=args.engine, temperature=args.temperature), sampling=args.temperature != 0
    )
    image = load_image(args.image)
    protocol = ProtocolConfig() if args.max_turns is None else ProtocolConfig(max_turns=args.max_turns)
    torch.manual_seed(args.seed)
    from mmsearch_r1.cli.eval import pixel_budget

    renderer = load_processor(args.model, *pixel_budget(args, None, None))
    rollout = RolloutConfig(
        engine=args.engine,
        max_new_tokens_per_turn=args.max_new_tokens,
        max_response_tokens=max(8192, args.max_new_tokens * protocol.max_turns * 2),
        prompt_set=args.prompt_set,
        n=1,
    )
    model = load_model(args.model, dtype=args.dtype, device=args.device) if args.engine == "hf" else None
    engine = build_engine(
        rollout, renderer, model=model, model_path=args.model, dtype=args.dtype, seed=args.seed
    )
    tools: dict[str, Any] = {}
    if not args.no_search:  # after the engine: vLLM failed to start with numba (bm25s) imported first
        from mmsearch_r1.tools import build_tools

        tools = build_tools(load_search_config(args.search) if args.search else SearchConfig())
    params = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, greedy=args.temperature == 0, seed=args.seed
    )
    sample = Sample("infer", args.question, [image], Answers(""), data_source="cli")
    (traj,) = run_rollouts(
        [sample],
        engine=engine,
        renderer=renderer,
        tools=tools,
        protocol=protocol,
        rollout=rollout,
        params=params,
        n=1,
    )
    _print(traj)
    if args.out:
        Path(args.out).write_text(
            json.dumps(traj.to_json(renderer.decode), indent=2, ensure_ascii=False) + "\n"
        )
        print(f"wrote {args.out}")
    return 0 if traj.finish_reason != "error" else 1


def _print(traj: Any) -> None:
    from mmsearch_r1.app.view import trajectory_text, view_from_trajectory  # the app's renderer, as text

    print(trajectory_text(view_from_trajectory(traj)), file=sys.stdout)
    sizes = ", ".join(f"{'x'.join(map(str, getattr(im, 'size', ())))}" for im in traj.images)
    print(f"images in context: {len(traj.images)} ({sizes})", file=sys.stdout)
