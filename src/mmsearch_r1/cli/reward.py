"""`mmsearch-r1 reward score IN.jsonl [-o OUT.jsonl] ...`: score trajectories with the rule-based reward.

Each input line is a JSON object:
    {"id": ..., "turns": [assistant turn texts], "gold": [answers] or a JSON-string list or one answer,
     "reward_mode": "EM" | "SubEM", "search_penalty_per_search": true | false}
`id` is optional and copied to the output; `reward_mode` and `search_penalty_per_search` override the command
line defaults for that line. `--profile original` scores with the released code's rules (format shapes, search
counting, answer normalisation; docs/protocol_and_reward.md). Each output line holds `total`, the reward
components, `final_answer` and `format_error` (why the format term is 0, or null). Blank lines are skipped. A bad
line (invalid UTF-8 or JSON, NaN/Infinity, nesting too deep, a bad field) stops the run with exit code 1 after the
lines before it were written, unless `--skip-bad` is given; its error names the file and the line. The reward and
protocol numbers are range-checked like a training config's (`config_io.reward_protocol_errors`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, BinaryIO, TextIO


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("reward", help="score trajectories with the rule-based reward")
    sub = p.add_subparsers(dest="reward_command", metavar="SUBCOMMAND")
    s = sub.add_parser("score", help="score a JSONL file of trajectories (one JSON line out per line in)")
    s.add_argument("input", metavar="IN.jsonl", help="input JSONL file ('-' for stdin)")
    s.add_argument("-o", "--output", metavar="OUT.jsonl", help="output file (default: stdout)")
    s.add_argument("--mode", choices=["EM", "SubEM"], default=None, help="answer matching (default EM)")
    s.add_argument(
        "--format-weight", type=float, default=None, help="weight a of the format term (default 0.1)"
    )
    s.add_argument("--search-penalty", type=float, default=None, help="search penalty p (default 0.1)")
    s.add_argument("--penalty-per-search", action="store_true", help="apply the penalty once per search")
    s.add_argument("--max-turns", type=int, default=None, help="protocol limit (default 3)")
    s.add_argument("--max-searches", type=int, default=None, help="protocol limit (default 2)")
    s.add_argument("--max-image-searches", type=int, default=None, help="protocol limit (default 1)")
    s.add_argument("--max-text-searches", type=int, default=None, help="protocol limit (default 1)")
    s.add_argument(
        "--profile",
        choices=["default", "original"],
        default="default",
        help="protocol profile: the project's rules or the released code's (docs/protocol_and_reward.md)",
    )
    s.add_argument("--skip-bad", action="store_true", help="skip bad lines (count reported on stderr)")
    s.set_defaults(func=_score)

    def _help(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=_help)


class BadLine(ValueError):
    pass


def _score(args: argparse.Namespace) -> int:
    from mmsearch_r1.config import ProtocolConfig, RewardConfig
    from mmsearch_r1.config_io import reward_protocol_errors

    rcfg = RewardConfig(penalty_per_search=args.penalty_per_search)
    if args.mode is not None:
        rcfg.mode = args.mode
    if args.format_weight is not None:
        if not 0.0 <= args.format_weight <= 1.0:
            raise ValueError(f"--format-weight must be in [0, 1], got {args.format_weight}")
        rcfg.format_weight = args.format_weight
    if args.search_penalty is not None:
        rcfg.search_penalty = args.search_penalty
    pcfg = ProtocolConfig(profile=args.profile)
    for name in ("max_turns", "max_searches", "max_image_searches", "max_text_searches"):
        value = getattr(args, name)
        if value is not None:
            setattr(pcfg, name, value)
    errs = reward_protocol_errors(dataclasses.asdict(rcfg), dataclasses.asdict(pcfg))
    if errs:  # the same range checks as a training config, named by their command-line flags
        flags = {f"{s}.{k}": f"--{k.replace('_', '-')}" for s in ("reward", "protocol") for k in _FLAG_KEYS}
        raise ValueError("; ".join(_flagged(e, flags) for e in errs))

    name = "<stdin>" if args.input == "-" else args.input
    src: BinaryIO = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")
    dst: TextIO = sys.stdout if not args.output else open(args.output, "w", encoding="utf-8")
    n_ok = n_bad = 0
    try:
        for lineno, raw in enumerate(src, start=1):
            try:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise BadLine(f"{name} line {lineno}: not valid UTF-8 (byte {e.start})") from None
                if not line.strip():
                    continue
                record = _score_line(line, f"{name} line {lineno}", rcfg, pcfg)
            except BadLine as e:
                if not args.skip_bad:
                    dst.flush()
                    print(f"error: {e}", file=sys.stderr)
                    return 1
                n_bad += 1
                print(f"skipped: {e}", file=sys.stderr)
                continue
            dst.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
            n_ok += 1
        dst.flush()
    finally:
        if src is not sys.stdin.buffer:
            src.close()
        if dst is not sys.stdout:
            dst.close()
    if args.skip_bad:
        print(f"scored {n_ok} lines, skipped {n_bad} bad lines", file=sys.stderr)
    return 0


_FLAG_KEYS = (
    "format_weight", "search_penalty", "max_turns", "max_searches", "max_image_searches", "max_text_searches",
)  # fmt: skip


def _flagged(err: str, flags: dict[str, str]) -> str:
    key = err.split("=", 1)[0]
    return err.replace(key, flags[key], 1) if key in flags else err


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _score_line(line: str, where: str, rcfg: Any, pcfg: Any) -> dict[str, Any]:
    from mmsearch_r1.protocol import extract_final_answer
    from mmsearch_r1.protocol_original import final_answer_original
    from mmsearch_r1.reward import REWARD_MODES, compute_reward, parse_candidates
    from mmsearch_r1.turns import format_check

    try:
        obj = json.loads(line, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise BadLine(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    except ValueError as e:  # NaN / Infinity: not JSON, and not writable back out as JSON
        raise BadLine(f"{where}: invalid JSON ({e})") from None
    except RecursionError:
        raise BadLine(f"{where}: invalid JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise BadLine(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for name in ("turns", "gold"):
        if name not in obj:
            raise BadLine(f"{where}: missing field '{name}'")
    turns = obj["turns"]
    if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
        raise BadLine(f"{where}: field 'turns' must be a list of strings (assistant turn texts)")
    gold = obj["gold"]
    if not isinstance(gold, (list, str)):
        raise BadLine(f"{where}: field 'gold' must be a list of strings or a JSON-string list")
    try:
        golds = parse_candidates(gold)
    except ValueError as e:
        raise BadLine(f"{where}: field 'gold': {e}") from None
    if not golds:
        raise BadLine(f"{where}: field 'gold' holds no answer")

    cfg = rcfg
    if "reward_mode" in obj:
        if obj["reward_mode"] not in REWARD_MODES:
            raise BadLine(f"{where}: field 'reward_mode' must be one of {list(REWARD_MODES)}")
        cfg = dataclasses.replace(cfg, mode=obj["reward_mode"])
    if "search_penalty_per_search" in obj:
        if not isinstance(obj["search_penalty_per_search"], bool):
            raise BadLine(f"{where}: field 'search_penalty_per_search' must be true or false")
        cfg = dataclasses.replace(cfg, penalty_per_search=obj["search_penalty_per_search"])

    out = compute_reward(turns, golds, cfg, pcfg)
    record: dict[str, Any] = {"id": obj["id"]} if "id" in obj else {}
    record.update(out.to_dict())
    extract = final_answer_original if pcfg.profile == "original" else extract_final_answer
    record["final_answer"] = extract(turns)
    record["format_error"] = format_check(turns, pcfg).reason
    return record
