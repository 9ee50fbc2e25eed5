"""`mmsearch-r1 reward score`: JSONL in, one scored JSON line out per input line; bad lines named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmsearch_r1.cli import main

ANS = "<reason>I know it.</reason><answer>Paris</answer>"
LONG = "<reason>I know it.</reason><answer>It is Paris, France</answer>"
IMG = "<reason>Look it up.</reason><search><img></search>"
TXT = "<reason>More.</reason><text_search>capital of france</text_search>"


def _write(path: Path, rows: list[object]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _read(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


GOOD = [
    {"id": "q1", "turns": [ANS], "gold": ["paris"]},
    {"id": 7, "turns": [IMG, TXT, ANS], "gold": '["Lyon", "PARIS."]'},
    {"turns": [LONG], "gold": ["paris"], "reward_mode": "SubEM"},
    {"turns": [IMG, TXT, ANS], "gold": ["paris"], "search_penalty_per_search": True},
    {"turns": [TXT, IMG, ANS], "gold": "Paris"},
]


def test_score_to_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _write(tmp_path / "in.jsonl", [GOOD[0], "", GOOD[1], GOOD[2], GOOD[3], GOOD[4]])
    assert main(["reward", "score", str(src)]) == 0
    out = _read(capsys.readouterr().out)
    assert len(out) == 5  # the blank line is skipped
    assert out[0]["id"] == "q1" and out[1]["id"] == 7 and "id" not in out[2]
    assert [o["total"] for o in out] == pytest.approx([1.0, 0.91, 1.0, 0.9 * 0.81 + 0.1, 0.81])
    assert (
        out[1]["n_searches"] == 2
        and out[1]["n_image_searches"] == 1
        and out[1]["penalty"] == pytest.approx(0.9)
    )
    assert out[0]["final_answer"] == "Paris" and out[0]["format_error"] is None
    assert "image search is only allowed in the first turn" in out[4]["format_error"]
    assert set(out[0]) >= {
        "total",
        "acc",
        "format",
        "penalty",
        "search_penalty",
        "answered",
        "n_text_searches",
    }


def test_cli_defaults_and_per_line_override(tmp_path: Path) -> None:
    src = _write(
        tmp_path / "in.jsonl", [GOOD[2] | {"reward_mode": "EM"}, {"turns": [LONG], "gold": ["paris"]}]
    )
    dst = tmp_path / "out.jsonl"
    assert main(["reward", "score", str(src), "-o", str(dst), "--mode", "SubEM"]) == 0
    out = _read(dst.read_text(encoding="utf-8"))
    assert [o["total"] for o in out] == pytest.approx([0.1, 1.0])  # the line's EM beats the CLI's SubEM

    src = _write(tmp_path / "in2.jsonl", [{"turns": [IMG, ANS], "gold": ["paris"]}])
    assert (
        main(
            ["reward", "score", str(src), "-o", str(dst), "--format-weight", "0.5", "--search-penalty", "0.2"]
        )
        == 0
    )
    assert _read(dst.read_text())[0]["total"] == pytest.approx(0.5 * 0.8 + 0.5)
    src = _write(tmp_path / "in3.jsonl", [{"turns": [IMG, TXT, ANS], "gold": ["paris"]}])
    assert main(["reward", "score", str(src), "-o", str(dst), "--penalty-per-search"]) == 0
    assert _read(dst.read_text())[0]["total"] == pytest.approx(0.9 * 0.81 + 0.1)
    src = _write(tmp_path / "in4.jsonl", [{"turns": [TXT, TXT, ANS], "gold": ["paris"]}])
    assert main(["reward", "score", str(src), "-o", str(dst)]) == 0
    assert _read(dst.read_text())[0]["format"] == 0
    assert main(["reward", "score", str(src), "-o", str(dst), "--max-text-searches", "2"]) == 0
    assert _read(dst.read_text())[0]["format"] == 1


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "line 2: invalid JSON"),
        ("[1, 2]", "line 2: expected a JSON object"),
        (json.dumps({"gold": ["x"]}), "line 2: missing field 'turns'"),
        (json.dumps({"turns": [ANS]}), "line 2: missing field 'gold'"),
        (json.dumps({"turns": ANS, "gold": ["x"]}), "line 2: field 'turns' must be a list of strings"),
        (json.dumps({"turns": [ANS, 3], "gold": ["x"]}), "line 2: field 'turns' must be a list of strings"),
        (json.dumps({"turns": [ANS], "gold": 5}), "line 2: field 'gold' must be a list"),
        (json.dumps({"turns": [ANS], "gold": [{"a": 1}]}), "line 2: field 'gold': candidate answer 0"),
        (json.dumps({"turns": [ANS], "gold": "[]"}), "line 2: field 'gold' holds no answer"),
        (json.dumps({"turns": [ANS], "gold": ["x"], "reward_mode": "F1"}), "line 2: field 'reward_mode'"),
        (
            json.dumps({"turns": [ANS], "gold": ["x"], "search_penalty_per_search": "yes"}),
            "line 2: field 'search_penalty_per_search' must be true or false",
        ),
    ],
)
def test_bad_line_stops_after_writing_earlier_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str, message: str
) -> None:
    src = _write(tmp_path / "in.jsonl", [GOOD[0], bad, GOOD[1]])
    dst = tmp_path / "out.jsonl"
    assert main(["reward", "score", str(src), "-o", str(dst)]) == 1
    assert message in capsys.readouterr().err
    out = _read(dst.read_text(encoding="utf-8"))
    assert [o["id"] for o in out] == ["q1"]  # the line before the bad one was written, nothing after


def test_skip_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _write(tmp_path / "in.jsonl", [GOOD[0], "{oops", json.dumps({"turns": [ANS]}), GOOD[1]])
    assert main(["reward", "score", str(src), "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert [o["id"] for o in _read(captured.out)] == ["q1", 7]
    assert "line 2: invalid JSON" in captured.err and "line 3: missing field 'gold'" in captured.err
    assert "skipped 2 bad lines" in captured.err


def test_missing_input_and_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reward", "score", str(tmp_path / "nope.jsonl")]) == 1
    assert "nope.jsonl" in capsys.readouterr().err
    src = _write(tmp_path / "in.jsonl", [GOOD[0]])
    assert main(["reward", "score", str(src), "--format-weight", "2"]) == 1
    assert "--format-weight" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["reward", "score", str(src), "--mode", "F1"])


def test_installed_script_subprocess(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("mmsearch-r1")
    if not script.exists():
        pytest.skip("mmsearch-r1 script not installed next to the interpreter")
    src = _write(tmp_path / "in.jsonl", [GOOD[0], GOOD[1], "{bad"])
    res = subprocess.run(
        [str(script), "reward", "score", str(src)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 1
    assert [o["total"] for o in _read(res.stdout)] == pytest.approx([1.0, 0.91])
    assert "line 3: invalid JSON" in res.stderr
    # stdin input
    res = subprocess.run(
        [str(script), "reward", "score", "-"],
        input=json.dumps(GOOD[0]) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and _read(res.stdout)[0]["id"] == "q1"
