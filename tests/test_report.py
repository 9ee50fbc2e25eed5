"""Run report: markdown + PNG plots from metrics.jsonl (a real tiny SFT run, and the GRPO trainer's keys)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from mmsearch_r1.eval.report import load_metrics, render_report


def _png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


def _table_row(md: str, key: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| `{key}` |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_report_from_a_real_sft_run(tmp_path: Path, tiny_model_dir) -> None:
    from PIL import Image as PILImage

    from mmsearch_r1.cli import main
    from mmsearch_r1.config import ProtocolConfig
    from mmsearch_r1.rl.sft_data import build_conversation, write_conversations
    from mmsearch_r1.types import Answers, Sample

    s = Sample("q", "Which city is this?", [PILImage.new("RGB", (56, 56), "red")], Answers("Paris"))
    conv = build_conversation(
        s, [("<reason>I know it.</reason><answer>Paris</answer>", None)], protocol=ProtocolConfig()
    )
    write_conversations(tmp_path / "c.jsonl", [conv])
    run = tmp_path / "run"
    args = [f"model.path={tiny_model_dir}", f"sft.train_files=[{tmp_path / 'c.jsonl'}]", f"sft.run_dir={run}"]
    assert main(["sft", "--no-progress", *args, "sft.max_steps=4", "sft.batch_size=1", "sft.lr=1e-3"]) == 0

    out = tmp_path / "rep"
    assert main(["report", str(run), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["sft/loss"] for r in rows]
    first, last, lo, hi = _table_row(md, "sft/loss")
    assert float(first) == pytest.approx(losses[0], rel=1e-3) and float(last) == pytest.approx(
        losses[-1], rel=1e-3
    )
    assert float(lo) == pytest.approx(min(losses), rel=1e-3) and float(hi) == pytest.approx(
        max(losses), rel=1e-3
    )
    assert "steps logged: 4 (step 1 to 4)" in md
    # an SFT run has loss, grad norm and lr, and none of the RL keys: those plots are listed as not drawn
    assert _png(out / "optimization.png") == (700, 3 * 360)
    assert "![Optimization](optimization.png)" in md
    for name in ("reward.png", "search.png", "validation.png", "accuracy.png"):
        assert not (out / name).exists()
    assert "No keys for: Reward, Accuracy, Search ratios by type, Validation by data source." in md
    assert f"resolved config: `{run / 'config.yaml'}`" in md


def _grpo_metrics(path: Path) -> list[dict]:
    """Lines in the trainer's documented layout (docs/training.md), with the faults a real file can have."""
    rows = []
    for step in range(1, 9):
        row = {
            "step": step,
            "reward": {"mean": 0.2 + 0.05 * step, "acc": 0.1 + 0.05 * step, "format": 0.9},
            "search/ratio_any": 1.0 - 0.1 * step,
            "search/ratio_image_only": 0.6 - 0.05 * step,
            "search/ratio_text_only": 0.1,
            "search/ratio_both": 0.3 - 0.05 * step,
            "actor/pg_loss": 0.01 * step,
            "actor/grad_norm": 1.0,
            "actor/lr": 1e-6,
            "rollout/finish_answer": True,  # booleans and strings are not plotted
            "note": "x",
        }
        if step in (1, 4, 8):
            row["val/world_head/acc"] = 0.5 + 0.05 * step
            row["val/world_tail/acc"] = 0.2 + 0.01 * step
            row["val/world_head/search_ratio"] = 0.9 - 0.1 * step
        rows.append(row)
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, json.dumps({**rows[2], "reward": {"mean": -5.0}}))  # step 3 logged twice: the last wins
    lines[3], lines[2] = lines[2], lines[3]
    lines.append('{"step": 9, "reward/me')  # cut short by a crash
    path.write_text("\n".join(lines) + "\n")
    return rows


def test_report_plots_every_group_and_tolerates_faults(tmp_path: Path, caplog) -> None:
    rows = _grpo_metrics(tmp_path / "metrics.jsonl")
    loaded = load_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in loaded] == list(range(1, 9))
    assert loaded[2]["reward/mean"] == pytest.approx(rows[2]["reward"]["mean"])
    assert "line 10: not valid JSON" in caplog.text

    report = render_report(tmp_path)
    assert report == tmp_path / "report" / "report.md"
    md = report.read_text()
    out = report.parent
    for name, panels in [
        ("reward", 1),
        ("accuracy", 1),
        ("search", 1),
        ("validation", 2),
        ("optimization", 3),
    ]:
        assert _png(out / f"{name}.png") == (700, 360 * panels)
    assert "Not plotted" not in md
    assert _table_row(md, "reward/mean")[:2] == [f"{0.25:.4g}", f"{0.6:.4g}"]
    assert _table_row(md, "search/ratio_any")[1] == f"{1.0 - 0.8:.4g}"
    # validation by data source at the first and the last validation step
    assert "At step 1:\n\n| data source | acc | search_ratio |" in md
    first, last = md.split("At step 1:")[1].split("At step 8:")
    assert re.search(r"^\| world_head \| 0.55 \| 0.8 \|$", first, re.M)
    assert re.search(r"^\| world_tail \| 0.21 \| - \|$", first, re.M)
    assert re.search(r"^\| world_head \| 0.9 \| 0.1 \|$", last, re.M)
    assert re.search(r"^\| world_tail \| 0.28 \| - \|$", last, re.M)


def test_report_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        render_report(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        render_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no metrics rows"):
        render_report(tmp_path)


def test_report_from_a_real_grpo_run(tmp_path: Path, tiny_model_dir) -> None:
    """A 1-step GRPO run of the tiny model on the trainer test's local search world, validated before and after."""
    from mmsearch_r1.rl.trainer import train
    from test_trainer import build_world, forced_hook, train_config

    world = build_world(tmp_path / "world")
    extra = {"trainer.total_steps": 1, "trainer.val_every": 1, "trainer.val_before_train": True}
    result = train(train_config(tiny_model_dir, world, tmp_path / "run", **extra), engine_hook=forced_hook())
    rows = [json.loads(ln) for ln in result.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]

    md = render_report(result.run_dir, tmp_path / "rep").read_text()
    out = tmp_path / "rep"
    for name, panels in [
        ("reward", 1),
        ("accuracy", 1),
        ("search", 1),
        ("validation", 2),
        ("optimization", 3),
    ]:
        assert _png(out / f"{name}.png") == (700, 360 * panels), name
    assert "Not plotted" not in md
    assert "steps logged: 2 (step 0 to 1)" in md
    for key in ("reward/mean", "search/ratio_any", "search/ratio_both", "actor/pg_loss"):
        values = [r[key] for r in rows if key in r]
        assert _table_row(md, key) == [f"{v:.4g}" for v in (values[0], values[-1], min(values), max(values))]
    # validation tables at steps 0 and 1, every source (the overall row last), checked against the file
    for step, part in zip((0, 1), md.split("At step ")[1:], strict=True):
        assert part.startswith(f"{step}:")
        lines = [ln for ln in part.splitlines() if ln.startswith("| ")]
        metrics = [c.strip() for c in lines[0].strip(" |").split("|")][1:]
        assert metrics[:2] == ["n", "acc"] and "search_ratio" in metrics
        sources = [ln.split("|")[1].strip() for ln in lines[1:]]
        assert sources == ["world_head", "world_tail", "all"]
        for ln, source in zip(lines[1:], sources, strict=True):
            cells = [c.strip() for c in ln.strip(" |").split("|")][1:]
            want = [rows[step].get(f"val/{source}/{m}") for m in metrics]
            assert cells == [f"{v:.4g}" if v is not None else "-" for v in want]
