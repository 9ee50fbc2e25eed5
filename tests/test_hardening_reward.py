"""Reward and protocol numbers are range-checked at load and in `reward score`; bad lines name file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmsearch_r1.cli import main
from mmsearch_r1.config_io import ConfigError, load_config

ANS = "<reason>I know it.</reason><answer>Paris</answer>"
GOOD = {"id": "q1", "turns": [ANS], "gold": ["paris"]}


@pytest.mark.parametrize(
    "override, key",
    [
        ("reward.search_penalty=-5", "reward.search_penalty"),
        ("reward.search_penalty=1.5", "reward.search_penalty"),
        ("reward.penalty_warmup_start=-3", "reward.penalty_warmup_start"),
        ("reward.format_weight=2", "reward.format_weight"),
        ("reward.penalty_warmup_steps=-1", "reward.penalty_warmup_steps"),
        ("protocol.max_turns=0", "protocol.max_turns"),
        ("protocol.max_image_searches=-1", "protocol.max_image_searches"),
        ("protocol.max_text_searches=-2", "protocol.max_text_searches"),
    ],
)
def test_out_of_range_reward_or_protocol_number_is_refused_at_load(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_in_range_values_load() -> None:
    cfg = load_config(
        None, ["reward.search_penalty=1", "reward.penalty_warmup_start=-1", "protocol.max_searches=0"]
    )
    assert cfg.reward.search_penalty == 1 and cfg.protocol.max_searches == 0


@pytest.mark.parametrize(
    "flags, name",
    [
        (["--search-penalty", "-5"], "--search-penalty"),
        (["--max-image-searches", "-1"], "--max-image-searches"),
    ],
)
def test_reward_score_range_checks_its_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], name: str
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(GOOD) + "\n")
    assert main(["reward", "score", str(src), *flags]) == 1
    captured = capsys.readouterr()
    assert name in captured.err and captured.out == ""


def _bad_lines() -> list[tuple[bytes, str]]:
    return [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"id": "\xff\xfe", "turns": [], "gold": ["x"]}', "not valid UTF-8"),
        (json.dumps({**GOOD, "id": float("nan")}).encode(), "NaN is not a JSON number"),
        (b'{"id": Infinity, "turns": ["x"], "gold": ["x"]}', "Infinity is not a JSON number"),
    ]


@pytest.mark.parametrize("bad, message", _bad_lines())
def test_bad_lines_name_file_and_line_and_can_be_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: bytes, message: str
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        json.dumps(GOOD).encode() + b"\n" + bad + b"\n" + json.dumps({**GOOD, "id": "q3"}).encode() + b"\n"
    )
    dst = tmp_path / "out.jsonl"
    assert main(["reward", "score", str(src), "-o", str(dst)]) == 1
    err = capsys.readouterr().err
    assert f"{src} line 2" in err and message in err
    assert main(["reward", "score", str(src), "-o", str(dst), "--skip-bad"]) == 0
    out = [json.loads(line) for line in dst.read_text().splitlines()]  # strict JSON: no NaN written
    assert [o["id"] for o in out] == ["q1", "q3"]
    assert "skipped 1 bad lines" in capsys.readouterr().err
