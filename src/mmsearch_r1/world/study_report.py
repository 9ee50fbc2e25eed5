"""The study's report (`world.study`): `OUT/report/report.md` with the table of means and standard deviations over
seeds per arm, the claims checked, and two plots (matplotlib Agg through its object API):
- `acc_vs_search.png`: accuracy against search ratio, one point per arm, seed and group (head: circles, tail:
  triangles; one colour per arm);
- `grpo_curves.png`: search ratio and accuracy of the training rollouts over GRPO steps, both GRPO arms, one line
  per seed and group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARM_LABEL = {
    "direct": "direct answer (SFT model, no tools)",
    "rag": "RAG workflow (SFT model, image + text search)",
    "sft_agent": "SFT model as agent",
    "grpo_penalty": "GRPO, search penalty",
    "grpo_no_penalty": "GRPO, no search penalty",
}
ARM_COLOR = {
    "direct": "tab:gray",
    "rag": "tab:orange",
    "sft_agent": "tab:blue",
    "grpo_penalty": "tab:green",
    "grpo_no_penalty": "tab:red",
}
GROUP_MARKER = {"head": "o", "tail": "^"}
CLAIM_TEXT = {
    "penalty_cuts_head_search_30_points": "the penalised GRPO arm's head search ratio is at least 30 points below "
    "the unpenalised arm's",
    "tail_search_at_least_90pct_both_grpo": "tail search ratio at least 90 % in both GRPO arms",
    "penalised_grpo_matches_rag_searching_less": "the penalised GRPO arm's accuracy is within 3 points of RAG's "
    "or above, at a lower search ratio",
    "direct_fails_on_tail": "direct answering fails on tail questions (tail accuracy at most 20 %)",
}


def _plot_scatter(study: dict[str, Any], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for arm, label in ARM_LABEL.items():
        for g, marker in GROUP_MARKER.items():
            pts = [
                (s["arms"][arm][g]["search_ratio"], s["arms"][arm][g]["acc"])
                for s in study["seeds"].values()
                if arm in s["arms"]
            ]
            if pts:
                ax.scatter(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    marker=marker,
                    color=ARM_COLOR[arm],
                    alpha=0.8,
                    s=45,
                    label=f"{label}: {g}",
                )
    ax.set_xlabel("search ratio (test, greedy)")
    ax.set_ylabel("accuracy (exact match)")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Accuracy against search ratio: one point per seed (circles head, triangles tail)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside: the points stay visible
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def _plot_curves(study: dict[str, Any], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, (prefix, title) in zip(
        axes,
        (("search/ratio_any/", "Search ratio (training rollouts)"), ("acc/", "Accuracy (training rollouts)")),
        strict=True,
    ):
        for arm in ("grpo_penalty", "grpo_no_penalty"):
            for seed, s in study["seeds"].items():
                c = s["arms"].get(arm, {}).get("curves", {})
                for g, style in (("head", "-"), ("tail", "--")):
                    pts = c.get(f"{prefix}world_{g}", [])
                    if pts:
                        ax.plot(
                            [p[0] for p in pts],
                            [p[1] for p in pts],
                            style,
                            color=ARM_COLOR[arm],
                            alpha=0.7,
                            label=f"{ARM_LABEL[arm]}: {g}" if seed == next(iter(study["seeds"])) else None,
                        )
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def _cell(stat: dict[str, float], n: int) -> str:
    return f"{100 * stat['mean']:.1f}" + (f" ± {100 * stat['std']:.1f}" if n > 1 else "")


def study_table(study: dict[str, Any]) -> list[str]:
    """Markdown rows: per arm, accuracy and search ratio (mean ± standard deviation over seeds, in %)."""
    md = [
        "| arm | seeds | acc head | acc tail | acc all | search head | search tail | search all |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, label in ARM_LABEL.items():
        a = study["aggregate"].get(arm)
        if a is None:
            continue
        n = a["n_seeds"]
        accs = [_cell(a[g]["acc"], n) for g in ("head", "tail", "all")]
        srs = [_cell(a[g]["search_ratio"], n) for g in ("head", "tail", "all")]
        md.append(f"| {label} | {n} | " + " | ".join(accs + srs) + " |")
    return md


def write_study_report(out_dir: Path, study: dict[str, Any]) -> dict[str, Path]:
    """Write `out_dir/report/{report.md, acc_vs_search.png, grpo_curves.png}`; returns their paths."""
    rep = out_dir / "report"
    rep.mkdir(parents=True, exist_ok=True)
    scatter = _plot_scatter(study, rep / "acc_vs_search.png")
    grpo = _plot_curves(study, rep / "grpo_curves.png")
    st = study["settings"]
    done = ", ".join(study["seeds"])
    md = [
        "# mmsearch-r1 study: RL with and without the search penalty against the paper's baselines",
        "",
        f"{'Quick' if st['quick'] else 'Default'} settings; seeds {done} of {', '.join(map(str, st['seeds']))}"
        f"{'' if study['complete'] else ' (unfinished: run the same command again to resume)'}. "
        "Test split of the demo's world, greedy decoding, exact match; head questions are search-free, tail "
        "questions search-required. Figures in %, mean ± standard deviation over seeds.",
        "",
        *study_table(study),
        "",
        "![accuracy against search ratio](acc_vs_search.png)",
        "",
        "## The paper's claims, on the seed means",
        "",
    ]
    for name, c in study["claims"].items():
        figs = ", ".join(f"{k} {v:.3f}" for k, v in c.items() if k != "holds")
        md.append(f"- {CLAIM_TEXT[name]}: {'yes' if c['holds'] else '**no**'} ({figs})")
    if not study["claims"]:
        md.append("- no arm pair finished yet")
    md += ["", "## GRPO training curves", "", "![GRPO curves](grpo_curves.png)", ""]
    report = rep / "report.md"
    tmp = rep / "report.md.tmp"
    tmp.write_text("\n".join(md) + "\n", encoding="utf-8")
    tmp.replace(report)
    return {"report": report, "acc_vs_search": scatter, "grpo_curves": grpo}
