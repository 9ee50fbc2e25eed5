"""`mmsearch-r1 study`: seeds parsing, the aggregate over seeds, the claims, the report; the quick study end to end
(a real subprocess) and its resumption at the first unfinished arm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmsearch_r1.world.study import ARMS, UNITS, aggregate, check_claims, parse_seeds, run_study
from mmsearch_r1.world.study_report import write_study_report

PNG = b"\x89PNG\r\n\x1a\n"


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds(" 3 ") == [3]
    for bad, word in (("0,x", "integers"), ("", "integers"), ("1,1", "repeated"), ("-1", ">= 0")):
        with pytest.raises(ValueError, match="--seeds") as e:
            parse_seeds(bad)
        assert word in str(e.value)


def _figs(head_acc, head_sr, tail_acc, tail_sr):
    return {
        "head": {"acc": head_acc, "search_ratio": head_sr, "n": 4},
        "tail": {"acc": tail_acc, "search_ratio": tail_sr, "n": 4},
        "all": {"acc": (head_acc + tail_acc) / 2, "search_ratio": (head_sr + tail_sr) / 2, "n": 8},
    }


def _seed(pen_head_sr, nopen_head_sr, rag_acc):
    curve = {
        "search/ratio_any/world_head": [[1, 0.6], [2, pen_head_sr]],
        "acc/world_tail": [[1, 0.5], [2, 0.75]],
    }
    return {
        "arms": {
            "direct": _figs(0.75, 0.0, 0.0, 0.0),
            "rag": _figs(rag_acc, 1.0, rag_acc, 1.0),
            "sft_agent": _figs(0.75, 0.5, 0.75, 1.0),
            "grpo_penalty": {**_figs(1.0, pen_head_sr, 0.75, 1.0), "curves": curve},
            "grpo_no_penalty": {**_figs(1.0, nopen_head_sr, 0.75, 1.0), "curves": curve},
        }
    }


def test_aggregate_and_claims():
    per_seed = {"0": _seed(0.0, 0.5, 0.75), "1": _seed(0.25, 1.0, 1.0)}
    agg = aggregate(per_seed)
    assert agg["grpo_penalty"]["n_seeds"] == 2
    assert agg["grpo_penalty"]["head"]["search_ratio"] == {"mean": 0.125, "std": 0.1768}  # stdev of 0, 0.25
    assert agg["rag"]["all"]["acc"] == {"mean": 0.875, "std": 0.1768}
    claims = check_claims(agg)
    assert claims["penalty_cuts_head_search_30_points"] == {"holds": True, "gap": 0.625}
    assert claims["tail_search_at_least_90pct_both_grpo"]["holds"] is True
    # penalised all-accuracy 0.875 vs RAG 0.875 at search 0.5625 vs 1.0
    c = claims["penalised_grpo_matches_rag_searching_less"]
    assert c["holds"] is True and c["acc_minus_rag"] == 0.0 and c["search_ratio_minus_rag"] == -0.4375
    assert claims["direct_fails_on_tail"] == {"holds": True, "tail_acc": 0.0}
    # the unpenalised arm searching as little as the penalised one: the ablation claim fails
    worse = check_claims(aggregate({"0": _seed(0.25, 0.5, 1.0)}))
    assert worse["penalty_cuts_head_search_30_points"]["holds"] is False
    assert worse["penalised_grpo_matches_rag_searching_less"]["holds"] is False  # 0.8125 < 1.0 - 0.03
    # a single seed has no spread; missing arms leave their claims out
    one = aggregate({"0": {"arms": {"direct": _figs(0.5, 0.0, 0.0, 0.0)}}})
    assert one["direct"]["tail"]["acc"] == {"mean": 0.0, "std": 0.0} and set(one) == {"direct"}
    assert set(check_claims(one)) == {"direct_fails_on_tail"}


def test_report(tmp_path):
    per_seed = {"0": _seed(0.0, 0.5, 0.75), "1": _seed(0.25, 1.0, 1.0)}
    agg = aggregate(per_seed)
    study = {
        "settings": {"seeds": [0, 1, 2], "quick": False, "overrides": [], "arms": list(ARMS)},
        "seeds": per_seed,
        "aggregate": agg,
        "claims": check_claims(agg),
        "complete": False,
    }
    paths = write_study_report(tmp_path, study)
    md = paths["report"].read_text()
    assert (
        "| GRPO, search penalty | 2 | 100.0 ± 0.0 | 75.0 ± 0.0 | 87.5 ± 0.0 | 12.5 ± 17.7 | 100.0 ± 0.0 |"
        in md
    )
    assert "| RAG workflow (SFT model, image + text search) | 2 | 87.5 ± 17.7 |" in md
    assert "seeds 0, 1 of 0, 1, 2 (unfinished" in md
    assert md.count(": yes (") == 4
    for key in ("acc_vs_search", "grpo_curves"):
        data = paths[key].read_bytes()
        assert data[:8] == PNG and len(data) > 5000, key


def test_restart_with_other_settings_is_refused(tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps({"seeds": [0], "quick": True, "overrides": []}))
    with pytest.raises(ValueError, match="quick=True"):
        run_study(tmp_path, seeds=[0], quick=False)
    with pytest.raises(ValueError, match="overrides"):
        run_study(tmp_path, seeds=[0], quick=True, overrides=["trainer.total_steps=2"])
    assert not (tmp_path / "seed0").exists()


def _cli(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mmsearch_r1.cli", "study", "--quick", "--seeds", "0", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )


@pytest.mark.slow
def test_study_quick_end_to_end_and_resume(tmp_path):
    out = tmp_path / "study"
    proc = _cli(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = json.loads((out / "study.json").read_text())
    assert set(study) == {"settings", "seeds", "aggregate", "claims", "complete", "wall_s", "paths"}
    assert study["complete"] is True and study["settings"]["quick"] is True
    run = study["seeds"]["0"]
    assert run["resumed"] == [] and set(run["arms"]) == set(ARMS)
    for arm in ARMS:
        a = run["arms"][arm]
        for g in ("head", "tail", "all"):
            assert set(a[g]) == {"acc", "search_ratio", "reward", "n"} and 0 <= a[g]["acc"] <= 1
        assert a["head"]["n"] + a["tail"]["n"] == a["all"]["n"] > 0
        ev = json.loads(Path(a["eval"]).read_text())  # the figures are those of the evaluation files
        assert ev["study_arm"] == arm and ev["study_policy"] == {"direct": "direct", "rag": "rag"}.get(
            arm, "agent"
        )
        assert ev["protocol"]["max_searches"] == {"direct": 0, "rag": 2}.get(arm, 2)
        assert ev["by_source"]["world_tail"]["search_ratio_any"] == a["tail"]["search_ratio"]
        assert set(study["aggregate"][arm]["all"]) == {"acc", "search_ratio"}
    assert run["arms"]["direct"]["all"]["search_ratio"] == 0.0  # no tools
    assert run["arms"]["rag"]["all"]["search_ratio"] == 1.0  # the image search is forced
    assert run["arms"]["grpo_penalty"]["search_penalty"] == 0.1
    assert run["arms"]["grpo_no_penalty"]["search_penalty"] == 0.0
    for arm in ("grpo_penalty", "grpo_no_penalty"):
        steps = [p[0] for p in run["arms"][arm]["curves"]["reward/mean"]]
        assert steps == list(range(1, run["arms"][arm]["steps"] + 1))
    assert set(study["claims"]) == {
        "penalty_cuts_head_search_30_points",
        "tail_search_at_least_90pct_both_grpo",
        "penalised_grpo_matches_rag_searching_less",
        "direct_fails_on_tail",
    }
    md = (out / "report" / "report.md").read_text()
    assert "| GRPO, no search penalty | 1 |" in md and "acc_vs_search.png" in md
    for png in ("acc_vs_search.png", "grpo_curves.png"):
        data = (out / "report" / png).read_bytes()
        assert data[:8] == PNG and len(data) > 5000, png

    # resume: as if killed during the last arm (its marker gone, partial output left): only that arm runs again
    done = out / "seed0" / "done"
    (done / "grpo_no_penalty.json").unlink()
    (out / "seed0" / "grpo_no_penalty" / "partial.txt").write_text("left by a killed run")
    before = {u: (done / f"{u}.json").stat().st_mtime_ns for u in UNITS if u != "grpo_no_penalty"}
    proc = _cli(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((out / "study.json").read_text())
    assert again["seeds"]["0"]["resumed"] == [u for u in UNITS if u != "grpo_no_penalty"]
    assert {u: (done / f"{u}.json").stat().st_mtime_ns for u in before} == before
    assert (done / "grpo_no_penalty.json").is_file()
    assert not (out / "seed0" / "grpo_no_penalty" / "partial.txt").exists()
    assert again["seeds"]["0"]["arms"]["grpo_penalty"] == run["arms"]["grpo_penalty"]
