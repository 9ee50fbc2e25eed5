"""Render a training run's metrics as a markdown report with PNG plots.

Input: `RUN_DIR/metrics.jsonl`, one JSON object per line with a `step` and namespaced keys (docs/training.md for
GRPO runs, docs/sft.md for SFT runs). Nested objects are flattened with `/` (`{"reward": {"mean": 1}}` is
`reward/mean`). A line that is not valid JSON (e.g. cut short by a crash) is skipped with a warning naming its
line number; a step logged twice (a resumed run) keeps its last line. Missing keys are tolerated: a plot is
drawn only from the keys the run has, and the report lists the plots it could not draw.

Plots (each one PNG, matplotlib's Agg backend through its object API, so no global pyplot state):
- `reward.png`: `reward/mean` and its components (`reward/acc`, `reward/format`, `reward/penalty`) over steps;
- `accuracy.png`: training accuracy (`acc/*`, or `reward/acc` when there is no `acc/*`) and the mean validation
  accuracy over data sources;
- `search.png`: search ratios by type (`search/ratio_any`, `ratio_image_only`, `ratio_text_only`, `ratio_both`);
- `validation.png`: `val/<source>/acc` per data source (one line each) and, in a second panel,
  `val/<source>/search_ratio` when logged;
- `optimization.png`: losses (`sft/loss`, `actor/pg_loss`, `actor/kl`, `actor/entropy`), `*grad_norm` and `*/lr`
  (a log scale when a positive panel spans more than a factor of 50).

The markdown holds the plots, a table of headline metrics (first, last, min, max), the validation tables (data
sources x `VAL_TABLE_METRICS`) at the first and the last validation step, and the resolved config's path when the
run saved one. A source named `all` (or `overall`) is the overall row: drawn dashed, listed last, and used as the
validation accuracy in `accuracy.png` (else the unweighted mean over sources).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SEARCH_KEYS = ("search/ratio_any", "search/ratio_image_only", "search/ratio_text_only", "search/ratio_both")
REWARD_KEYS = ("reward/mean", "reward/acc", "reward/format", "reward/penalty")
HEADLINE_KEYS = (
    "reward/mean",
    "reward/acc",
    "search/ratio_any",
    "search/ratio_image_only",
    "search/ratio_text_only",
    "search/ratio_both",
    "rollout/turns_mean",
    "sft/loss",
    "actor/pg_loss",
)
# validation metrics shown in the markdown tables (those present, in this order)
VAL_TABLE_METRICS = (
    "n",
    "acc",
    "acc_subem",
    "search_ratio",
    "search_ratio_image_only",
    "search_ratio_text_only",
    "search_ratio_both",
    "searches_per_question",
    "turns_mean",
)
OVERALL_SOURCES = ("all", "overall")
_VAL = re.compile(r"^val/(?P<source>.+)/(?P<metric>[^/]+)$")

Series = dict[str, list[tuple[int, float]]]


# ----------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------
def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def load_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a metrics JSONL file, flattened, ordered by step; the last line of a repeated step wins."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"metrics file not found: {p}")
    by_step: dict[int, dict[str, Any]] = {}
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                log.warning("%s line %d: not valid JSON (%s); skipped", p, lineno, e.msg)
                continue
            if not isinstance(row, dict):
                log.warning("%s line %d: not a JSON object; skipped", p, lineno)
                continue
            row = _flatten(row)
            step = row.get("step", len(by_step))
            if not isinstance(step, (int, float)) or isinstance(step, bool):
                log.warning("%s line %d: step %r is not a number; skipped", p, lineno, step)
                continue
            row["step"] = int(step)
            by_step[int(step)] = row
    return [by_step[s] for s in sorted(by_step)]


def series(rows: Iterable[dict[str, Any]]) -> Series:
    """key -> [(step, value)] for every finite numeric value (booleans and strings are left out)."""
    out: Series = {}
    for row in rows:
        for k, v in row.items():
            if k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if not math.isfinite(float(v)):
                continue
            out.setdefault(k, []).append((int(row["step"]), float(v)))
    return out


def validation_table(s: Series) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """source -> metric -> [(step, value)] from the `val/<source>/<metric>` keys."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for key, pts in s.items():
        m = _VAL.match(key)
        if m:
            out.setdefault(m["source"], {})[m["metric"]] = pts
    return out


# ----------------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------------
def _new_figure(panels: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 3.6 * panels), dpi=100)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(panels, 1, i + 1) for i in range(panels)]
    return fig, axes


_STYLES = ("-", "--", "-.", ":")


def _line(ax: Any, pts: Sequence[tuple[int, float]], label: str, **style: Any) -> None:
    """One series; each further line of an axes gets the next dash style, so equal series stay visible."""
    xs, ys = zip(*pts, strict=True)
    style.setdefault("linestyle", _STYLES[len(ax.get_lines()) % len(_STYLES)])
    ax.plot(xs, ys, marker="o" if len(pts) <= 30 else None, markersize=3, label=label, **style)


def _finish(fig: Any, axes: Sequence[Any], path: Path, titles: Sequence[str], ylabels: Sequence[str]) -> Path:
    from matplotlib.ticker import MaxNLocator

    for ax, title, ylabel in zip(axes, titles, ylabels, strict=True):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _plot_keys(s: Series, keys: Sequence[str], path: Path, title: str, ylabel: str) -> Path | None:
    present = [k for k in keys if s.get(k)]
    if not present:
        return None
    fig, (ax,) = _new_figure()
    for k in present:
        _line(ax, s[k], k)
    return _finish(fig, [ax], path, [title], [ylabel])


def _overall(val: dict[str, dict[str, list[tuple[int, float]]]], metric: str) -> list[tuple[int, float]]:
    """The logged overall series (`val/all/<metric>`), else the unweighted mean over data sources."""
    for name in OVERALL_SOURCES:
        if val.get(name, {}).get(metric):
            return val[name][metric]
    by_step: dict[int, list[float]] = {}
    for source, metrics in val.items():
        if source in OVERALL_SOURCES:
            continue
        for step, v in metrics.get(metric, []):
            by_step.setdefault(step, []).append(v)
    return [(step, sum(vs) / len(vs)) for step, vs in sorted(by_step.items())]


def _plot_accuracy(s: Series, val: dict[str, Any], path: Path) -> Path | None:
    train = sorted(k for k in s if k.startswith("acc/")) or [k for k in ("reward/acc",) if s.get(k)]
    val_pts = _overall(val, "acc")
    if not train and not val_pts:
        return None
    fig, (ax,) = _new_figure()
    for k in train:
        _line(ax, s[k], f"train {k}")
    if val_pts:
        _line(ax, val_pts, "validation acc (all sources)")
    return _finish(fig, [ax], path, ["Accuracy"], ["accuracy"])


def _plot_validation(val: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> Path | None:
    metrics = [m for m in ("acc", "search_ratio") if any(m in v for v in val.values())]
    if not metrics:
        return None
    fig, axes = _new_figure(len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        for source in sorted(val, key=_source_order):
            if val[source].get(metric):
                overall = source in OVERALL_SOURCES
                _line(
                    ax,
                    val[source][metric],
                    source,
                    **({"linestyle": "--", "color": "black"} if overall else {}),
                )
    titles = [f"Validation {m} by data source" for m in metrics]
    return _finish(fig, axes, path, titles, metrics)


def _plot_optimization(s: Series, path: Path) -> Path | None:
    groups = [
        [k for k in ("sft/loss", "actor/pg_loss", "actor/kl", "actor/entropy") if s.get(k)],
        sorted(k for k in s if k.endswith("grad_norm")),
        sorted(k for k in s if k.endswith("/lr") or k == "lr"),
    ]
    names = [
        ("Loss (and KL, entropy)", "value"),
        ("Gradient norm (before clipping)", "norm"),
        ("Learning rate", "lr"),
    ]
    used = [(g, n) for g, n in zip(groups, names, strict=True) if g]
    if not used:
        return None
    fig, axes = _new_figure(len(used))
    for ax, (keys, (title, _)) in zip(axes, used, strict=True):
        for k in keys:
            _line(ax, s[k], k)
        values = [v for k in keys for _, v in s[k]]
        if title != "Learning rate" and min(values) > 0 and max(values) / min(values) > 50:
            ax.set_yscale("log")  # losses and norms spanning decades
    return _finish(fig, axes, path, [n[0] for _, n in used], [n[1] for _, n in used])


# ----------------------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------------------
def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}"


def _headline(s: Series) -> list[str]:
    lines = ["| metric | first | last | min | max |", "|---|---|---|---|---|"]
    n = 0
    for k in HEADLINE_KEYS:
        pts = s.get(k)
        if not pts:
            continue
        vals = [v for _, v in pts]
        lines.append(
            f"| `{k}` | {_fmt(vals[0])} | {_fmt(vals[-1])} | {_fmt(min(vals))} | {_fmt(max(vals))} |"
        )
        n += 1
    return lines if n else ["(none of the headline metrics were logged)"]


def _source_order(source: str) -> tuple[bool, str]:
    return (source in OVERALL_SOURCES, source)  # the overall row last


def _val_md(val: dict[str, dict[str, list[tuple[int, float]]]]) -> list[str]:
    """One table per shown validation step (the first and the last): data sources x the main metrics."""
    if not val:
        return ["(no `val/<source>/<metric>` keys in this run)"]
    present = {m for v in val.values() for m in v}
    metrics = [m for m in VAL_TABLE_METRICS if m in present] or sorted(present)[:8]
    steps = sorted({step for v in val.values() for pts in v.values() for step, _ in pts})
    lines: list[str] = []
    for step in [steps[0]] if len(steps) == 1 else [steps[0], steps[-1]]:
        lines += [f"At step {step}:", "", "| data source | " + " | ".join(metrics) + " |"]
        lines.append("|---|" + "---|" * len(metrics))
        for source in sorted(val, key=_source_order):
            cells = [_fmt(dict(val[source].get(m, [])).get(step)) for m in metrics]
            lines.append(f"| {source} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines[:-1]


def render_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write `report.md` and its PNG plots for `run_dir` (default out: `run_dir/report`); return report.md's path."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory not found: {run}")
    rows = load_metrics(run / "metrics.jsonl")
    if not rows:
        raise ValueError(f"{run / 'metrics.jsonl'} holds no metrics rows")
    out = Path(out_dir) if out_dir is not None else run / "report"
    out.mkdir(parents=True, exist_ok=True)
    s = series(rows)
    val = validation_table(s)

    plots: list[tuple[str, Path | None]] = [
        ("Reward", _plot_keys(s, REWARD_KEYS, out / "reward.png", "Training reward", "reward")),
        ("Accuracy", _plot_accuracy(s, val, out / "accuracy.png")),
        ("Search ratios by type", _plot_keys(s, SEARCH_KEYS, out / "search.png", "Search ratio", "ratio")),
        ("Validation by data source", _plot_validation(val, out / "validation.png")),
        ("Optimization", _plot_optimization(s, out / "optimization.png")),
    ]
    steps = [r["step"] for r in rows]
    md = [
        f"# Run report: {run.name}",
        "",
        f"- run directory: `{run}`",
        f"- steps logged: {len(rows)} (step {steps[0]} to {steps[-1]})",
    ]
    for cfg_name in ("config.yaml", "config.resolved.yaml"):
        if (run / cfg_name).is_file():
            md.append(f"- resolved config: `{run / cfg_name}`")
            break
    md += [
        "",
        "## Headline metrics",
        "",
        *_headline(s),
        "",
        "## Validation by data source",
        "",
        *_val_md(val),
    ]
    missing = [title for title, path in plots if path is None]
    for title, path in plots:
        if path is not None:
            md += ["", f"## {title}", "", f"![{title}]({path.name})"]
    if missing:
        md += ["", "## Not plotted", "", "No keys for: " + ", ".join(missing) + "."]
    report = out / "report.md"
    report.write_text("\n".join(md) + "\n", encoding="utf-8")
    log.info("report written to %s (%d plots)", report, len(plots) - len(missing))
    return report
