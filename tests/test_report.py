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
    assert "| data source | acc @ 1 | acc @ 8 | search_ratio @ 1 | search_ratio @ 8 |" in md
    head = re.search(r"^\| world_head \|(.*)$", md, re.M).group(1)
    assert [c.strip() for c in head.strip(" |").split("|")] == ["0.55", "0.9", "0.8", "0.1"]
    tail = re.search(r"^\| world_tail \|(.*)$", md, re.M).group(1)
    assert [c.strip() for c in tail.strip(" |").split("|")] == ["0.21", "0.28", "-", "-"]


def test_report_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        render_report(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        render_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no metrics rows"):
        render_report(tmp_path)
