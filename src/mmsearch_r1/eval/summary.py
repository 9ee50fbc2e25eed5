"""Per-sample evaluation records and their summary (per data source, overall, per category), as JSON and markdown.

`sample_record(sample, traj, reward, verdict, policy)` is one line of `samples.jsonl`: the sample (id, data
source, category, question, gold answers), every assistant turn (text, parsed action, refusal, the tool call with
its observation text; thumbnails appear as `<image>` in the text and by source/size under `images`), the final
answer, EM / SubEM, the judge verdict, the reward components, the finish reason and token counts.

`summarize(records)` computes, for all records and for each group (data source; category; source x category):
- accuracy: `acc_em`, `acc_subem` (share of all samples); with a judge, `acc_judge` = judged correct / judged,
  where "judged" excludes judge failures (`judge_failures`, reported beside it; a sample without a final answer
  counts as judged and wrong);
- search behaviour: `search_ratio_{any,image,text,both,image_only,text_only}` (share of samples whose trajectory
  made at least one such tool call; "image" = any image search, "image_only" = image but no text search),
  `searches_per_question`, `turns_mean`;
- tools: `tool_calls`, `tool_error_ratio` (failed calls / calls; 0 when there were none);
- tokens: `prompt_tokens_mean`, `response_tokens_mean` (assistant + tool turns), `generated_tokens_mean`
  (assistant turns only, forced tokens included);
- `reward_mean`, `format_ok`, `answered`, and `finish` (count per finish reason).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from mmsearch_r1.protocol import extract_final_answer
from mmsearch_r1.reward import (
    exact_match,
    exact_match_original,
    gold_list,
    sub_exact_match,
    sub_exact_match_original,
)
from mmsearch_r1.types import RewardOutput, Sample


def sample_record(
    sample: Sample,
    traj: Any,
    reward: RewardOutput,
    verdict: Any = None,
    *,
    policy: str = "agent",
    profile: str = "default",
) -> dict[str, Any]:
    """One JSON-ready record (see the module docstring). `traj` is a `rollout.Trajectory`. `profile` is the
    protocol profile: under `original`, the final answer, EM and SubEM follow the released code's rules
    (docs/protocol_and_reward.md), as its reward does."""
    golds = gold_list(sample.answers)
    texts = traj.assistant_texts
    if profile == "original":
        from mmsearch_r1.protocol_original import final_answer_original

        pred = final_answer_original(texts)
        em, subem = exact_match_original(pred, golds), sub_exact_match_original(pred, golds)
    else:
        pred = extract_final_answer(texts)
        em, subem = exact_match(pred, golds), sub_exact_match(pred, golds)
    exported = traj.to_json()
    tools = [t.tool for t in traj.turns if t.tool is not None]
    return {
        "id": sample.id,
        "data_source": sample.data_source,
        "category": sample.category,
        "policy": policy,
        "question": sample.question,
        "gold": {"ground_truth": sample.answers.ground_truth, "candidates": list(sample.answers.candidates)},
        "final_answer": pred,
        "em": bool(em),
        "subem": bool(subem),
        "judge": verdict.to_json() if verdict is not None else None,
        "reward": reward.to_dict(),
        "finish_reason": traj.finish_reason,
        "error": traj.error,
        "actions": [t.action.kind for t in traj.turns],
        "n_turns": len(traj.turns),
        "n_image_searches": traj.n_image_searches,
        "n_text_searches": traj.n_text_searches,
        "n_tool_calls": len(tools),
        "n_tool_errors": sum(1 for t in tools if not t.ok),
        "tokens": {
            "prompt": len(traj.prompt_ids),
            "response": len(traj.response_ids),
            "generated": sum(t.end - t.start for t in traj.turns),
            "sampled": traj.n_sampled_tokens,
        },
        "turns": exported["turns"],
        "images": exported["images"],
    }


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def group_metrics(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The metrics of one group of records (see the module docstring)."""
    n = len(records)
    img = [r["n_image_searches"] > 0 for r in records]
    txt = [r["n_text_searches"] > 0 for r in records]
    calls = sum(r["n_tool_calls"] for r in records)
    out: dict[str, Any] = {
        "n": n,
        "acc_em": _mean([float(r["em"]) for r in records]),
        "acc_subem": _mean([float(r["subem"]) for r in records]),
        "reward_mean": _mean([r["reward"]["total"] for r in records]),
        "format_ok": _mean([r["reward"].get("format", 0.0) for r in records]),
        "answered": _mean([float(r["final_answer"] is not None) for r in records]),
        "search_ratio_any": _mean([float(a or b) for a, b in zip(img, txt, strict=True)]),
        "search_ratio_image": _mean([float(a) for a in img]),
        "search_ratio_text": _mean([float(b) for b in txt]),
        "search_ratio_both": _mean([float(a and b) for a, b in zip(img, txt, strict=True)]),
        "search_ratio_image_only": _mean([float(a and not b) for a, b in zip(img, txt, strict=True)]),
        "search_ratio_text_only": _mean([float(b and not a) for a, b in zip(img, txt, strict=True)]),
        "searches_per_question": _mean([r["n_image_searches"] + r["n_text_searches"] for r in records]),
        "turns_mean": _mean([r["n_turns"] for r in records]),
        "tool_calls": calls,
        "tool_error_ratio": (sum(r["n_tool_errors"] for r in records) / calls) if calls else 0.0,
        "prompt_tokens_mean": _mean([r["tokens"]["prompt"] for r in records]),
        "response_tokens_mean": _mean([r["tokens"]["response"] for r in records]),
        "generated_tokens_mean": _mean([r["tokens"]["generated"] for r in records]),
        "finish": dict(sorted(Counter(str(r["finish_reason"]) for r in records).items())),
    }
    judged = [r["judge"] for r in records if r.get("judge") is not None]
    if judged:
        ok = [j for j in judged if j["correct"] is not None]
        out["acc_judge"] = _mean([float(j["correct"]) for j in ok])
        out["judge_judged"] = len(ok)
        out["judge_failures"] = len(judged) - len(ok)
    return out


def summarize(records: Iterable[dict[str, Any]], **info: Any) -> dict[str, Any]:
    """{"overall", "by_source", "by_category", "by_source_category", **info}; category keys only when present."""
    records = list(records)
    by_source: dict[str, list] = defaultdict(list)
    by_cat: dict[str, list] = defaultdict(list)
    by_both: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_source[r["data_source"]].append(r)
        if r.get("category"):
            by_cat[r["category"]].append(r)
            by_both[r["data_source"]][r["category"]].append(r)
    summary: dict[str, Any] = dict(info)
    summary["overall"] = group_metrics(records)
    summary["by_source"] = {s: group_metrics(rs) for s, rs in sorted(by_source.items())}
    if by_cat:
        summary["by_category"] = {c: group_metrics(rs) for c, rs in sorted(by_cat.items())}
        summary["by_source_category"] = {
            s: {c: group_metrics(rs) for c, rs in sorted(cats.items())} for s, cats in sorted(by_both.items())
        }
    return summary


def flat_metrics(summary: dict[str, Any], prefix: str = "val") -> dict[str, float]:
    """Scalar metrics as `prefix/<source>/<name>` and `prefix/all/<name>` (for metric loggers).

    `acc` is the judge accuracy when a judge ran, else EM; `search_ratio` is `search_ratio_any`.
    """
    out: dict[str, float] = {}
    groups = {"all": summary["overall"], **summary["by_source"]}
    for cat, m in summary.get("by_category", {}).items():
        groups[f"category_{cat}"] = m
    for name, m in groups.items():
        for key, value in m.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{prefix}/{name}/{key}"] = float(value)
        out[f"{prefix}/{name}/acc"] = float(m.get("acc_judge", m["acc_em"]))
        out[f"{prefix}/{name}/search_ratio"] = float(m["search_ratio_any"])
    return out


_COLUMNS = [
    ("n", "n", "d"),
    ("EM", "acc_em", "%"),
    ("SubEM", "acc_subem", "%"),
    ("Judge", "acc_judge", "%"),
    ("search any", "search_ratio_any", "%"),
    ("image", "search_ratio_image", "%"),
    ("text", "search_ratio_text", "%"),
    ("both", "search_ratio_both", "%"),
    ("searches/q", "searches_per_question", ".2f"),
    ("turns", "turns_mean", ".2f"),
    ("tool err", "tool_error_ratio", "%"),
    ("gen tokens", "generated_tokens_mean", ".1f"),
]


def _cell(m: dict[str, Any], key: str, fmt: str) -> str:
    if key not in m:
        return "-"
    v = m[key]
    if fmt == "%":
        return f"{100 * v:.1f}"
    return format(v, fmt)


def _table(rows: list[tuple[str, dict[str, Any]]], first: str, judge: bool) -> list[str]:
    cols = [c for c in _COLUMNS if judge or c[1] != "acc_judge"]
    lines = [
        "| " + " | ".join([first] + [c[0] for c in cols]) + " |",
        "|" + "---|" * (len(cols) + 1),
    ]
    for name, m in rows:
        lines.append("| " + " | ".join([name] + [_cell(m, key, fmt) for _, key, fmt in cols]) + " |")
    return lines


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown tables (accuracies and ratios in %)."""
    judge = "acc_judge" in summary["overall"]
    title = "# Evaluation"
    if summary.get("policy"):
        title += f" ({summary['policy']} policy)"
    lines = [title, ""]
    for key in ("model", "data_files", "n_samples"):
        if key in summary:
            value = summary[key]
            value = ", ".join(map(str, value)) if isinstance(value, list) else value
            lines.append(f"- {key.replace('_', ' ')}: {value}")
    lines += ["", "## By data source", ""]
    rows = [*summary["by_source"].items(), ("**overall**", summary["overall"])]
    lines += _table(rows, "data source", judge)
    if "by_category" in summary:
        lines += ["", "## By category", ""]
        lines += _table(list(summary["by_category"].items()), "category", judge)
        lines += ["", "## By data source and category", ""]
        both = [
            (f"{s} / {c}", m) for s, cats in summary["by_source_category"].items() for c, m in cats.items()
        ]
        lines += _table(both, "data source / category", judge)
    finish = summary["overall"]["finish"]
    lines += ["", "Finish reasons: " + ", ".join(f"{k} {v}" for k, v in finish.items())]
    if judge:
        o = summary["overall"]
        lines.append(
            f"Judge: {o['judge_judged']} judged, {o['judge_failures']} failures (excluded from Judge)."
        )
    return "\n".join(lines) + "\n"
