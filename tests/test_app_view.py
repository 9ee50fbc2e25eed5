"""The app's pure parts: the saved-trajectory reader (eval/records.py), the trajectory renderer (app/view.py),
the run-directory scan (app/runs.py), the Runs tab's data functions and the host check. No Gradio server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmsearch_r1.app.runs import curve_table, scan_run
from mmsearch_r1.app.runs_tab import filtered, open_run
from mmsearch_r1.app.server import check_host
from mmsearch_r1.app.view import (
    TrajView,
    image_results,
    live_tool,
    live_turn,
    text_results,
    trajectory_html,
    trajectory_text,
    view_from_record,
)
from mmsearch_r1.eval.records import filter_records, read_records
from mmsearch_r1.types import ToolResult

IMG_TEXT = "<image>1. Dobel Tarn - statue\n<image>2. Kiva Ro - emblem\n"
PAGE_TEXT = (
    "1. Dobel Tarn\nURL: https://world.example/wiki/Dobel_Tarn\nSummary: Dobel Tarn is in Wyvik.\n\n"
    "2. Bad <b>page</b>\nURL: javascript:alert(1)\nSummary: x < y & z\n"
)


def _turn(i: int, text: str, kind: str, content: str = "", tool: dict | None = None) -> dict:
    t = {
        "index": i,
        "text": text,
        "action": {"kind": kind, "content": content, "reason": None},
        "refusal": None,
    }
    if tool:
        t["tool"] = tool
    return t


def _eval_line(i: int, source: str, searched: bool, em: bool, total: float) -> dict:
    turns = []
    if searched:
        turns.append(
            _turn(
                0,
                "<reason>Unknown</reason><search><img></search>",
                "image_search",
                tool={"name": "image_search", "arg": None, "ok": True, "text": IMG_TEXT},
            )
        )
    turns.append(_turn(len(turns), "<reason>r</reason><answer> Wyvik</answer>", "answer", "Wyvik"))
    return {
        "id": f"q{i}",
        "data_source": source,
        "question": f"Where is statue {i}?",
        "gold": {"ground_truth": "Wyvik", "candidates": ["wyvik city"]},
        "final_answer": "Wyvik",
        "em": em,
        "reward": {"total": total, "acc": float(em), "format": 1.0, "penalty": 0.9 if searched else 1.0},
        "finish_reason": "answer",
        "turns": turns,
    }


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    ev = tmp_path / "eval" / "grpo"
    ev.mkdir(parents=True)
    lines = [
        _eval_line(0, "world_head", False, True, 1.0),
        _eval_line(1, "world_tail", True, True, 0.91),
        _eval_line(2, "world_tail", True, False, 0.1),
        _eval_line(3, "world_head", True, True, 0.91),
    ]
    text = (
        "\n".join(json.dumps(x) for x in lines[:2])
        + "\n{not json\n"
        + "\n".join(json.dumps(x) for x in lines[2:])
    )
    (ev / "samples.jsonl").write_text(text + "\n[1, 2]\n")
    run = tmp_path / "grpo"
    (run / "traces").mkdir(parents=True)
    trace = {
        k: v
        for k, v in _eval_line(5, "world_tail", True, True, 0.91).items()
        if k not in ("gold", "em", "id")
    }
    trace.update(sample_id="t5", group_index=2, reward={"total": 0.91, "acc": 1.0, "format": 1.0})
    (run / "traces" / "step_0003.jsonl").write_text(json.dumps(trace) + "\n")
    rows = [
        {"step": 1, "reward/mean": 0.5, "search/ratio_any": 0.8, "actor/kl": 0.0},
        {"step": 2, "reward/mean": 0.7, "search/ratio_any": 0.6, "actor/kl": 0.01},
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path


def test_records_read_eval_and_trace_lines_and_report_corrupt_ones(run_dir: Path) -> None:
    rf = read_records(run_dir / "eval" / "grpo" / "samples.jsonl")
    assert [r.id for r in rf.records] == ["q0", "q1", "q2", "q3"]
    assert [r.line for r in rf.records] == [1, 2, 4, 5]
    assert rf.problems == [
        "samples.jsonl line 3: not valid JSON (Expecting property name enclosed in double quotes); skipped",
        "samples.jsonl line 6: not a JSON object; skipped",
    ]
    r1 = rf.records[1]
    assert (r1.kind, r1.data_source, r1.searched, r1.correct, r1.gold) == (
        "eval",
        "world_tail",
        True,
        True,
        ["Wyvik", "wyvik city"],
    )
    assert not rf.records[0].searched and rf.records[0].n_image_searches == 0

    tr = read_records(run_dir / "grpo" / "traces" / "step_0003.jsonl").records[0]
    assert (tr.kind, tr.id, tr.group_index, tr.step, tr.correct, tr.final_answer) == (
        "trace",
        "t5",
        2,
        3,
        True,
        "Wyvik",
    )
    with pytest.raises(FileNotFoundError, match="trajectory file not found"):
        read_records(run_dir / "nope.jsonl")


def test_filters(run_dir: Path) -> None:
    recs = read_records(run_dir / "eval" / "grpo" / "samples.jsonl").records
    assert [r.id for r in filter_records(recs, searched=True, correct=True)] == ["q1", "q3"]
    assert [r.id for r in filter_records(recs, data_source="world_head")] == ["q0", "q3"]
    assert [r.id for r in filter_records(recs, correct=False)] == ["q2"]
    assert [r.id for r in filter_records(recs, min_reward=0.5, max_reward=0.95)] == ["q1", "q3"]
    # the Runs tab's function: counts, choices, sources, corrupt-line messages, bad bounds
    f = filtered(str(run_dir / "eval" / "grpo" / "samples.jsonl"), "world_tail", "yes", "yes", "", "")
    assert f["count"] == "1 of 4 trajectories match." and [v for _, v in f["choices"]] == ["1"]
    assert f["sources"] == ["any", "world_head", "world_tail"] and len(f["problems"]) == 2
    bad = filtered(str(run_dir / "eval" / "grpo" / "samples.jsonl"), "any", "any", "any", "abc", "")
    assert bad["count"] == "Reward from: 'abc' is not a number." and bad["choices"] == []


def test_html_shows_thumbnails_titles_links_reward_and_escapes(run_dir: Path) -> None:
    rec = read_records(run_dir / "eval" / "grpo" / "samples.jsonl").records[1]
    html = trajectory_html(view_from_record(rec))
    assert "Dobel Tarn - statue" in html and "Kiva Ro - emblem" in html
    assert html.count("thumbnail not stored") == 2  # saved records hold no pixels, said so
    assert "Final answer:" in html and "(correct)" in html and "Wyvik | wyvik city" in html
    assert "search penalty" in html and "0.910" in html

    # live: a turn, then its tool result with real thumbnails, then a text search with links
    view = TrajView(question="What is <this>?")
    live_turn(view, "<reason>Unknown</reason><search><img></search>")
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    live_tool(
        view,
        "image_search",
        None,
        ToolResult([red, "1. Dobel Tarn - statue\n", blue, "2. Kiva Ro - emblem\n"]),
    )
    live_turn(view, "<reason>r</reason><text_search>Dobel Tarn</text_search>")
    live_tool(view, "text_search", "Dobel Tarn", ToolResult([PAGE_TEXT]))
    assert [(im is not None, t) for im, t in image_results(view.turns[0].tool)] == [
        (True, "Dobel Tarn - statue"),
        (True, "Kiva Ro - emblem"),
    ]
    pages = text_results(view.turns[1].tool)
    assert [p["url"] for p in pages] == ["https://world.example/wiki/Dobel_Tarn", "javascript:alert(1)"]
    html = trajectory_html(view)
    assert html.count('<img class="mm-thumb" src="data:image/png;base64,') == 2
    assert 'href="https://world.example/wiki/Dobel_Tarn"' in html
    assert (
        'href="javascript' not in html and "<b>page</b>" not in html and "Bad &lt;b&gt;page&lt;/b&gt;" in html
    )
    assert "What is &lt;this&gt;?" in html and "generating..." in html  # not finished yet

    text = trajectory_text(view)
    assert (
        "[image 8x8] Dobel Tarn - statue" in text
        and "Dobel Tarn <https://world.example/wiki/Dobel_Tarn>" in text
    )


def test_scan_run_and_curves(run_dir: Path, tmp_path: Path) -> None:
    idx = scan_run(run_dir)
    assert list(idx.metrics) == ["grpo"]
    assert set(idx.trajectories) == {"eval/grpo: evaluation", "grpo: step 3"}
    assert idx.evaluations == ["eval/grpo: evaluation"]
    rows = curve_table(idx.metrics["grpo"], ("reward/mean", "search/"))
    assert rows == [
        {"step": 1, "metric": "reward/mean", "value": 0.5},
        {"step": 2, "metric": "reward/mean", "value": 0.7},
        {"step": 1, "metric": "search/ratio_any", "value": 0.8},
        {"step": 2, "metric": "search/ratio_any", "value": 0.6},
    ]
    # a directory without metrics, and one that does not exist: messages, not exceptions
    empty = tmp_path / "empty"
    empty.mkdir()
    assert any("No metrics.jsonl" in s for s in open_run(str(empty))["status"])
    assert open_run(str(tmp_path / "missing"))["status"] == [
        f"run directory not found: {tmp_path / 'missing'}"
    ]


def test_host_check() -> None:
    assert check_host("127.0.0.1", False) is None
    with pytest.raises(ValueError, match="--allow-remote"):
        check_host("0.0.0.0", False)
    assert "no authentication" in check_host("0.0.0.0", True)


def test_cli_refuses_a_remote_host_without_the_flag(capsys) -> None:
    from mmsearch_r1.cli import main

    assert main(["app", "--host", "0.0.0.0", "--port", "7999"]) == 1
    err = capsys.readouterr().err
    assert "--host 0.0.0.0: not a loopback address" in err and "--allow-remote" in err
    assert main(["app", "--port", "0"]) == 1
    assert "--port 0: not a port number" in capsys.readouterr().err


def test_side_by_side_lists_changed_search_behaviour_first(tmp_path: Path) -> None:
    from mmsearch_r1.app.runs_tab import common_ids

    for name, searched in (("sft", [True, True, False]), ("grpo", [True, False, False])):
        d = tmp_path / name
        d.mkdir()
        lines = [_eval_line(i, "world_head", s, True, 1.0) for i, s in enumerate(searched)]
        (d / "samples.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ids = common_ids(str(tmp_path / "sft" / "samples.jsonl"), str(tmp_path / "grpo" / "samples.jsonl"))
    assert [i for _, i in ids] == ["q1", "q0", "q2"]
    assert "(searched | no search)" in ids[0][0]
