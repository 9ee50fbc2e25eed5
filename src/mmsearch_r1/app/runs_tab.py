"""The Runs tab: a run directory's curves, its saved trajectories (filtered), and two evaluations side by side.

Open a directory (training, SFT, evaluation, or the demo's output): the curves of a `metrics.jsonl`
(`runs.CURVES`), the trajectories of any training step or evaluation filtered by data source, searched or
not, correct or not and reward range, one shown as in the Ask tab (`view.trajectory_html`), and the same
question in two evaluations side by side (the demo: after SFT and after GRPO). Problems are messages on the
page: a directory that does not exist, one without metrics, corrupt lines in a trajectory file.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from mmsearch_r1.app.runs import CURVES, curve_table, scan_run
from mmsearch_r1.app.view import trajectory_html, view_from_record
from mmsearch_r1.eval.records import filter_records, read_records

ANY = "any"
YES_NO = {"any": None, "yes": True, "no": False}


def _msg(lines: list[str]) -> str:
    return "\n".join(f"- {html.escape(x)}" for x in lines) if lines else ""


def _records(path: str) -> Any:
    return read_records(path)


def open_run(root: str) -> dict[str, Any]:
    """Everything the tab shows right after opening `root` (plain data; the Gradio layer maps it)."""
    try:
        idx = scan_run(root.strip())
    except FileNotFoundError as e:
        return {"status": [str(e)], "metrics": {}, "trajectories": {}, "evaluations": []}
    status = [
        f"Opened {idx.root}: {len(idx.metrics)} metrics file(s), {len(idx.trajectories)} trajectory file(s)."
    ]
    if not idx.metrics:
        status.append(f"No metrics.jsonl in {idx.root} or its sub-directories: no curves to draw.")
    if not idx.trajectories:
        status.append("No samples.jsonl or traces/step_*.jsonl: no trajectories to show.")
    return {
        "status": status,
        "metrics": {k: str(v) for k, v in idx.metrics.items()},
        "trajectories": {k: str(v) for k, v in idx.trajectories.items()},
        "evaluations": list(idx.evaluations),
    }


def curves(metrics_path: str | None) -> tuple[list[Any], list[str]]:
    """One DataFrame per `CURVES` panel (empty when nothing matched) and problems."""
    import pandas as pd

    frames, problems = [], []
    for _title, patterns in CURVES.items():
        rows: list[dict[str, Any]] = []
        if metrics_path:
            try:
                rows = curve_table(Path(metrics_path), patterns)
            except (FileNotFoundError, ValueError) as e:
                problems.append(str(e))
        frames.append(pd.DataFrame(rows, columns=["step", "metric", "value"]))
    return frames, sorted(set(problems))


def filtered(path: str | None, source: str, searched: str, correct: str, lo: Any, hi: Any) -> dict[str, Any]:
    """The file's records after the filters: choices for the trajectory picker, counts and problems."""
    if not path:
        return {"choices": [], "sources": [ANY], "count": "No trajectory file selected.", "problems": []}
    try:
        rf = _records(path)
    except FileNotFoundError as e:
        return {"choices": [], "sources": [ANY], "count": str(e), "problems": [str(e)]}
    sources = [ANY] + sorted({r.data_source for r in rf.records if r.data_source})
    bounds = []
    for name, v in (("Reward from", lo), ("Reward to", hi)):
        text = str(v if v is not None else "").strip()
        try:
            bounds.append(float(text) if text else None)
        except ValueError:
            return {
                "choices": [],
                "sources": sources,
                "count": f"{name}: {text!r} is not a number.",
                "problems": [],
            }
    kept = filter_records(
        rf.records,
        data_source=None if source in (ANY, None, "") else source,
        searched=YES_NO.get(searched or ANY),
        correct=YES_NO.get(correct or ANY),
        min_reward=bounds[0],
        max_reward=bounds[1],
    )
    pos = {id(r): i for i, r in enumerate(rf.records)}
    return {
        "choices": [(r.label, str(pos[id(r)])) for r in kept],
        "sources": sources,
        "count": f"{len(kept)} of {len(rf.records)} trajectories match.",
        "problems": rf.problems,
    }


def show(path: str | None, index: str | None) -> str:
    if not path or index in (None, ""):
        return ""
    rf = _records(path)
    i = int(index)
    if not 0 <= i < len(rf.records):
        return ""
    return trajectory_html(view_from_record(rf.records[i]))


def compare(left: str | None, right: str | None, key: str | None) -> tuple[str, str]:
    """The trajectory of question `key` (its id) in the two evaluation files."""
    out = []
    for path in (left, right):
        html_ = ""
        if path and key:
            rec = next((r for r in _records(path).records if r.id == key), None)
            html_ = trajectory_html(view_from_record(rec)) if rec else "(not in this evaluation)"
        out.append(html_)
    return out[0], out[1]


def common_ids(left: str | None, right: str | None) -> list[tuple[str, str]]:
    """(label, id) of the questions in both files; those whose search behaviour differs come first."""
    if not left or not right:
        return []
    a = _records(left).records
    b = {r.id: r for r in _records(right).records}
    rows = []
    for r in a:
        if r.id not in b:
            continue
        s1, s2 = r.searched, b[r.id].searched
        what = f"{'searched' if s1 else 'no search'} | {'searched' if s2 else 'no search'}"
        rows.append((s1 == s2, (f"{r.id} [{r.data_source}] ({what}) {r.question[:50]}", r.id)))
    return [row for _, row in sorted(rows, key=lambda x: x[0])]


def build_runs_tab(gr: Any, blocks: Any, default_root: str) -> None:
    """Add the tab's components and events to the enclosing `gr.Blocks` (inside a `gr.Tab`)."""
    with gr.Row():
        root = gr.Textbox(value=default_root, label="Run directory", scale=4, elem_id="runs-dir")
        open_btn = gr.Button("Open", variant="primary", scale=1, elem_id="runs-open")
    status = gr.Markdown(elem_id="runs-status")
    metrics_dd = gr.Dropdown(choices=[], label="Metrics file", elem_id="runs-metrics")
    plots = []
    with gr.Row():
        for title in CURVES:
            plots.append(gr.LinePlot(x="step", y="value", color="metric", title=title, height=260))
    gr.Markdown("### Trajectories")
    with gr.Row():
        traj_file = gr.Dropdown(choices=[], label="Step or evaluation", elem_id="runs-file", scale=2)
        source = gr.Dropdown(choices=[ANY], value=ANY, label="Data source", elem_id="runs-source")
        searched = gr.Radio(list(YES_NO), value=ANY, label="Searched", elem_id="runs-searched")
        correct = gr.Radio(list(YES_NO), value=ANY, label="Correct", elem_id="runs-correct")
        lo = gr.Textbox(value="", placeholder="any", label="Reward from", elem_id="runs-rmin")
        hi = gr.Textbox(value="", placeholder="any", label="Reward to", elem_id="runs-rmax")
    count = gr.Markdown(elem_id="runs-count")
    problems = gr.Markdown(elem_id="runs-problems")
    pick = gr.Dropdown(choices=[], label="Trajectory", elem_id="runs-pick")
    traj_html = gr.HTML(elem_id="runs-traj")
    gr.Markdown("### Two evaluations side by side")
    with gr.Row():
        left = gr.Dropdown(choices=[], label="Left", elem_id="runs-left")
        right = gr.Dropdown(choices=[], label="Right", elem_id="runs-right")
        question = gr.Dropdown(choices=[], label="Question", elem_id="runs-question")
    with gr.Row():
        left_html = gr.HTML(elem_id="runs-left-traj")
        right_html = gr.HTML(elem_id="runs-right-traj")

    def on_open(r: str):
        info = open_run(r)
        metrics = list(info["metrics"].items())
        m_default = info["metrics"].get("grpo") or (metrics[-1][1] if metrics else None)
        trajs = list(info["trajectories"].items())
        evals = [(k, info["trajectories"][k]) for k in info["evaluations"]]
        t_default = evals[-1][1] if evals else (trajs[-1][1] if trajs else None)
        l_default = evals[0][1] if evals else None
        r_default = evals[1][1] if len(evals) > 1 else l_default
        frames, probs = curves(m_default)
        return (
            _msg(info["status"] + probs),
            gr.update(choices=[(k, v) for k, v in metrics], value=m_default),
            *frames,
            gr.update(choices=[(k, v) for k, v in trajs], value=t_default),
            gr.update(choices=evals, value=l_default),
            gr.update(choices=evals, value=r_default),
        )

    def on_metrics(path: str | None):
        frames, _ = curves(path)
        return tuple(frames)

    def on_filter(path, src, s, c, a, b):
        f = filtered(path, src, s, c, a, b)
        first = f["choices"][0][1] if f["choices"] else None
        src_value = src if src in f["sources"] else ANY
        return (
            gr.update(choices=f["sources"], value=src_value),
            f["count"],
            _msg(f["problems"]),
            gr.update(choices=f["choices"], value=first),
            show(path, first),
        )

    def on_pair(a, b):
        ids = common_ids(a, b)
        first = ids[0][1] if ids else None
        return (gr.update(choices=ids, value=first), *compare(a, b, first))

    metrics_dd.input(on_metrics, metrics_dd, plots)
    filters = [traj_file, source, searched, correct, lo, hi]
    filter_out = [source, count, problems, pick, traj_html]
    triggers = [open_btn.click, root.submit] + ([blocks.load] if default_root else [])
    open_ev = gr.on(triggers, on_open, root, [status, metrics_dd, *plots, traj_file, left, right])
    open_ev.then(on_filter, filters, filter_out).then(
        on_pair, [left, right], [question, left_html, right_html]
    )
    for comp in (traj_file, source, searched, correct):
        comp.input(on_filter, filters, filter_out)
    for comp in (lo, hi):
        comp.submit(on_filter, filters, filter_out)
    pick.input(show, [traj_file, pick], traj_html)
    for comp in (left, right):
        comp.input(on_pair, [left, right], [question, left_html, right_html])
    question.input(compare, [left, right, question], [left_html, right_html])
