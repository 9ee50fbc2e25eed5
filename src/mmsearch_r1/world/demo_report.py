"""The demo's report: `report/report.md` with a before/after table split by head and tail questions, the demo's
own plots and the SFT and GRPO run reports (`eval.report.render_report`).

Plots (matplotlib Agg through its object API):
- `demo_curves.png`: GRPO training reward (mean and accuracy component); accuracy over steps (training rollouts
  per data source, and greedy validation on world_head / world_tail); search ratio over steps (training rollouts
  and greedy validation, per group);
- `before_after.png`: test accuracy and search ratio of head and tail questions, after SFT and after GRPO.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_GROUP_LABEL = {"head": "head (search-free)", "tail": "tail (search-required)", "all": "all"}


def _series(rows: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(r["step"], float(r[key])) for r in rows if isinstance(r.get(key), (int, float))]


def _plot_curves(rows: list[dict[str, Any]], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    panels = [
        (
            "GRPO training reward",
            "reward",
            [("reward/mean", "reward (mean)", "-"), ("reward/acc", "acc component", "--")],
        ),
        (
            "Accuracy",
            "accuracy",
            [
                ("acc/world_head", "train rollouts: head", "-"),
                ("acc/world_tail", "train rollouts: tail", "-"),
                ("val/world_head/acc", "validation: head", "o--"),
                ("val/world_tail/acc", "validation: tail", "s--"),
            ],
        ),
        (
            "Search ratio",
            "share of answers that searched",
            [
                ("search/ratio_any/world_head", "train rollouts: head", "-"),
                ("search/ratio_any/world_tail", "train rollouts: tail", "-"),
                ("val/world_head/search_ratio", "validation: head", "o--"),
                ("val/world_tail/search_ratio", "validation: tail", "s--"),
            ],
        ),
    ]
    for ax, (title, ylabel, keys) in zip(axes, panels, strict=True):
        for key, label, style in keys:
            pts = _series(rows, key)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def _plot_before_after(summary: dict[str, Any], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    groups = ["head", "tail"]
    for ax, (metric, title) in zip(
        axes, (("acc", "Test accuracy (EM)"), ("search_ratio", "Test search ratio")), strict=True
    ):
        xs = range(len(groups))
        for off, (when, label) in ((-0.2, ("before", "after SFT")), (0.2, ("after", "after GRPO"))):
            vals = [summary[when][g][metric] for g in groups]
            bars = ax.bar([x + off for x in xs], vals, width=0.4, label=label)
            for b, v in zip(bars, vals, strict=True):
                ax.annotate(
                    f"{v:.0%}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8
                )
        ax.set_xticks(list(xs), [_GROUP_LABEL[g] for g in groups])
        ax.set_ylim(0, 1.12)
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def before_after_table(summary: dict[str, Any]) -> list[str]:
    """Markdown rows: accuracy, search ratio and mean reward per group, after SFT and after GRPO."""
    md = [
        "| questions | n | accuracy after SFT | accuracy after GRPO | search ratio after SFT | search ratio after GRPO "
        "| reward after SFT | reward after GRPO |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in ("head", "tail", "all"):
        b, a = summary["before"][g], summary["after"][g]
        md.append(
            f"| {_GROUP_LABEL[g]} | {a['n']} | {_pct(b['acc'])} | {_pct(a['acc'])} | "
            f"{_pct(b['search_ratio'])} | {_pct(a['search_ratio'])} | {b['reward']:.3f} | {a['reward']:.3f} |"
        )
    return md


def write_demo_report(
    out_dir: Path, summary: dict[str, Any], *, sft_run: Path, grpo_run: Path
) -> dict[str, Path]:
    """Write the report under `out_dir/report`; returns {"report", "curves", "before_after", "sft_report",
    "grpo_report"} paths."""
    from mmsearch_r1.eval.report import load_metrics, render_report

    rep = out_dir / "report"
    rep.mkdir(parents=True, exist_ok=True)
    rows = load_metrics(grpo_run / "metrics.jsonl")
    curves = _plot_curves(rows, rep / "demo_curves.png")
    bars = _plot_before_after(summary, rep / "before_after.png")
    sft_report = render_report(sft_run, rep / "sft")
    grpo_report = render_report(grpo_run, rep / "grpo")
    c = summary["checks"]
    yes = {True: "yes", False: "**no**"}
    md = [
        "# mmsearch-r1 demo: on-demand search learned by RL with a search penalty",
        "",
        f"Seed {summary['seed']}, {'quick' if summary['quick'] else 'default'} run. A tiny Qwen2.5-VL learns a "
        "procedural world in SFT (with a deliberately imperfect choice of when to search), then GRPO with the "
        "search penalty (a correct answer is worth 1.0 without search, 0.91 with) teaches it to answer head "
        "entities directly and to search for tail entities it has never seen. Test split, greedy decoding, "
        "exact match.",
        "",
        "## Before and after GRPO (test split)",
        "",
        *before_after_table(summary),
        "",
        "![before and after](before_after.png)",
        "",
        "## Expected effect",
        "",
        f"- accuracy does not fall (all, head, tail): {yes[c['accuracy_not_lower']]}",
        f"- mean reward rises (all): {yes[c['reward_rises']]}",
        f"- head search ratio falls by at least 30 % relative: {yes[c['head_search_drops_30pct']]} "
        f"({_pct(c['head_search_drop_relative'])})",
        f"- tail search ratio at least 90 % after GRPO: {yes[c['tail_search_ratio_at_least_90pct']]}",
        f"- tail accuracy at least 80 % after SFT: {yes[c['tail_accuracy_after_sft_at_least_80pct']]}",
        "",
        "## GRPO curves",
        "",
        "![curves](demo_curves.png)",
        "",
        f"Run reports with every plot: [SFT](sft/{sft_report.name}), [GRPO](grpo/{grpo_report.name}).",
    ]
    report = rep / "report.md"
    report.write_text("\n".join(md) + "\n", encoding="utf-8")
    log.info("demo report written to %s", report)
    return {
        "report": report,
        "curves": curves,
        "before_after": bars,
        "sft_report": sft_report,
        "grpo_report": grpo_report,
    }
