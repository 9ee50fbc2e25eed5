"""`mmsearch-r1 demo --quick` end to end (a real subprocess), its report files and summary keys; the shipped demo
configs match the built-in settings; the effect checks."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmsearch_r1.cli.demo import EXIT_CHECKS_FAILED, print_outcome
from mmsearch_r1.config_io import config_to_dict, load_config
from mmsearch_r1.world.demo import (
    DEMO_INIT_RANGE,
    DEMO_KV_HEADS,
    DEMO_OVERRIDES,
    DEMO_ROPE_THETA,
    QUICK_OVERRIDES,
    STAGES,
    effect_checks,
    failed_checks,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "mmsearch_r1.cli", "demo", "--quick", "--out", str(out), "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # progress bars for every stage, and the closing summary with the paths written
    for title in ("1/7 build the world", "3/7 SFT warm start", "5/7 GRPO", "7/7 write the report"):
        assert title in proc.stderr
    assert "head (search-free)" in proc.stdout and "tail (search-required)" in proc.stdout
    assert str(out / "report" / "report.md") in proc.stdout

    summary = json.loads((out / "summary.json").read_text())
    assert {"seed", "quick", "world", "before", "after", "checks", "sft", "grpo", "paths", "wall_s"} <= set(
        summary
    )
    assert summary["seed"] == 1 and summary["quick"] is True
    for when in ("before", "after"):
        for g in ("head", "tail", "all"):
            m = summary[when][g]
            assert (
                set(m) == {"acc", "search_ratio", "reward", "n"}
                and 0 <= m["acc"] <= 1
                and 0 <= m["search_ratio"] <= 1
                and -1 <= m["reward"] <= 1
            )
        assert summary[when]["head"]["n"] + summary[when]["tail"]["n"] == summary[when]["all"]["n"] > 0
    assert set(summary["checks"]) == {
        "accuracy_not_lower",
        "reward_rises",
        "head_search_drop_relative",
        "head_search_drops_30pct",
        "tail_search_ratio_at_least_90pct",
        "tail_accuracy_after_sft_at_least_80pct",
    }
    assert summary["failed_checks"] == failed_checks(summary)
    assert ("checks: all hold" in proc.stdout) is (not summary["failed_checks"])  # quick: listed, exit 0
    assert all(f"  - {line}" in proc.stdout for line in summary["failed_checks"])
    assert set(STAGES) | {"total"} == set(summary["wall_s"])
    assert summary["sft"]["steps"] == int(dict(o.split("=") for o in QUICK_OVERRIDES)["sft.max_steps"])
    assert summary["grpo"]["steps"] == int(dict(o.split("=") for o in QUICK_OVERRIDES)["trainer.total_steps"])
    for key in ("report", "curves", "before_after", "sft_report", "grpo_report", "eval_sft", "eval_grpo"):
        assert Path(summary["paths"][key]).is_file(), key
    for png in (
        "demo_curves.png",
        "before_after.png",
        "grpo/reward.png",
        "grpo/search.png",
        "sft/optimization.png",
    ):
        data = (out / "report" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    md = (out / "report" / "report.md").read_text()
    assert "| head (search-free) |" in md and "| tail (search-required) |" in md
    # the summary's figures are those of the evaluation files
    ev = json.loads(Path(summary["paths"]["eval_grpo"]).read_text())
    assert ev["by_source"]["world_head"]["search_ratio_any"] == summary["after"]["head"]["search_ratio"]
    assert ev["by_source"]["world_tail"]["acc_em"] == summary["after"]["tail"]["acc"]
    # The directions the quick settings do show (measured, seeds 0, 1, 2 on this machine): SFT teaches the familiar
    # (head) entities and searching on demand, so head questions are answered far more often than tail ones
    # (accuracy head minus tail after a quick SFT: 0.75, 0.71, 0.44) and tail questions are searched more often
    # (search ratio tail minus head: 0.50, 0.31, 0.71); SFT lowers its loss. The GRPO direction needs the default
    # run: 3 quick GRPO steps moved the head search ratio by -19, -6 and 0 points on those seeds.
    base = json.loads((out / "model" / "base" / "config.json").read_text())
    text = base["text_config"]  # the demo's model, not the library default
    assert text["initializer_range"] == DEMO_INIT_RANGE and text["num_key_value_heads"] == DEMO_KV_HEADS
    assert text["rope_parameters"]["rope_theta"] == DEMO_ROPE_THETA
    before = summary["before"]
    assert before["head"]["acc"] >= before["tail"]["acc"] + 0.3, before
    assert before["tail"]["search_ratio"] >= before["head"]["search_ratio"] + 0.1, before
    sft_rows = [json.loads(line) for line in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    sft_loss = [r["sft/loss"] for r in sft_rows if "sft/loss" in r]
    assert len(sft_loss) >= 2 and sft_loss[-1] < 0.5 * sft_loss[0], sft_loss
    rows = [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward/mean" in r] == list(range(1, summary["grpo"]["steps"] + 1))


@pytest.mark.parametrize(
    ("name", "overrides"), [("demo.yaml", DEMO_OVERRIDES), ("demo_quick.yaml", QUICK_OVERRIDES)]
)
def test_shipped_configs_match_builtin_settings(name, overrides):
    assert config_to_dict(load_config(ROOT / "configs" / name)) == config_to_dict(
        load_config(None, overrides)
    )


def _fig(head_acc, head_sr, tail_acc, tail_sr):
    n = 64

    def reward(acc, sr):  # 0.9 * acc * penalty + 0.1 * format (search penalty 0.1, format always right)
        return 0.9 * acc * (1 - 0.1 * sr) + 0.1

    head, tail = reward(head_acc, head_sr), reward(tail_acc, tail_sr)
    return {
        "head": {"acc": head_acc, "search_ratio": head_sr, "reward": head, "n": n},
        "tail": {"acc": tail_acc, "search_ratio": tail_sr, "reward": tail, "n": n},
        "all": {
            "acc": (head_acc + tail_acc) / 2,
            "search_ratio": (head_sr + tail_sr) / 2,
            "reward": (head + tail) / 2,
            "n": 2 * n,
        },
    }


def test_effect_checks():
    good = effect_checks(_fig(0.8, 0.5, 0.8, 0.9), _fig(0.9, 0.2, 0.8, 0.95))
    assert good == {
        "accuracy_not_lower": True,
        "reward_rises": True,
        "head_search_drop_relative": 0.6,
        "head_search_drops_30pct": True,
        "tail_search_ratio_at_least_90pct": True,
        "tail_accuracy_after_sft_at_least_80pct": True,
    }
    bad = effect_checks(_fig(0.8, 0.5, 0.6, 0.9), _fig(0.8, 0.4, 0.5, 0.85))
    assert bad["accuracy_not_lower"] is False and bad["reward_rises"] is False
    assert bad["head_search_drop_relative"] == 0.2 and bad["head_search_drops_30pct"] is False
    assert bad["tail_search_ratio_at_least_90pct"] is False
    assert bad["tail_accuracy_after_sft_at_least_80pct"] is False
    # all questions may not fall; a group may fall by one of its questions, not by two
    one, two = _fig(0.9, 0.2, 0.8 - 1 / 64, 0.95), _fig(0.9, 0.2, 0.8 - 2 / 64, 0.95)
    assert effect_checks(_fig(0.8, 0.5, 0.8, 0.9), one)["accuracy_not_lower"] is True
    assert effect_checks(_fig(0.8, 0.5, 0.8, 0.9), two)["accuracy_not_lower"] is False
    assert effect_checks(_fig(0.9, 0.5, 0.8, 0.9), one)["accuracy_not_lower"] is False  # all fell
    assert effect_checks(_fig(1, 0, 1, 1), _fig(1, 0, 1, 1))["head_search_drop_relative"] == 0.0
    # at the accuracy ceiling, fewer needless searches still raise the reward; more searches lower it
    assert effect_checks(_fig(0.98, 0.5, 0.94, 1), _fig(0.98, 0.08, 0.94, 1))["reward_rises"] is True
    assert effect_checks(_fig(0.98, 0.08, 0.94, 1), _fig(0.98, 0.5, 0.94, 1))["reward_rises"] is False


def _summary(before, after):
    return {"before": before, "after": after, "checks": effect_checks(before, after)}


def test_failed_checks_name_each_failing_check_with_its_figures():
    s = _summary(_fig(0.8, 0.5, 0.6, 0.9), _fig(0.8, 0.4, 0.5, 0.85))
    lines = failed_checks(s)
    assert [line.split(":")[0] for line in lines] == [
        "accuracy_not_lower",
        "reward_rises",
        "head_search_drops_30pct",
        "tail_search_ratio_at_least_90pct",
        "tail_accuracy_after_sft_at_least_80pct",
    ]
    assert "tail 60.0% -> 50.0%" in lines[0]
    assert "50.0% -> 40.0%" in lines[2] and "20% relative drop" in lines[2]
    assert "85.0%" in lines[3]
    assert "tail accuracy after SFT 60.0%" in lines[4]
    assert failed_checks(_summary(_fig(0.8, 0.5, 0.8, 0.9), _fig(0.9, 0.2, 0.8, 0.95))) == []


@pytest.mark.parametrize(
    ("after", "quick", "status"),
    [
        (_fig(0.9, 0.2, 0.8, 0.95), False, 0),
        (_fig(0.9, 0.2, 0.7, 0.95), False, EXIT_CHECKS_FAILED),
        (_fig(0.9, 0.2, 0.7, 0.95), True, 0),
    ],
)
def test_demo_output_lists_failed_checks_and_sets_exit_status(after, quick, status):
    s = _summary(_fig(0.8, 0.5, 0.8, 0.9), after)
    buf = io.StringIO()
    rc = print_outcome(
        s, {}, quick=quick, elapsed=1.0, report="r/report.md", summary_path="r/summary.json", file=buf
    )
    text = buf.getvalue()
    assert rc == status
    if failed_checks(s):
        assert "checks FAILED: 1 of 5" in text
        assert (
            "  - accuracy_not_lower: accuracy fell: all 80.0% -> 80.0%, head 80.0% -> 90.0%, tail 80.0% -> 70.0%"
            " (all questions may not fall, a group by one question)" in text
        )
        assert ("smoke run" in text) is quick
    else:
        assert "checks: all hold" in text and "FAILED" not in text
