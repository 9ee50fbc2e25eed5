"""The `original` protocol profile against the default: one test per documented difference.

Expected values come from the documented rules (docs/protocol_and_reward.md, "Profiles"): each case states the
accuracy, format score and number of penalised searches under each profile, and the total is computed from the
formula total = (1 - a) * acc * penalty + a * format, so a rule that is wrong changes a component and fails.
"""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

import mmsearch_r1.protocol_original as po
from mmsearch_r1.cli import main
from mmsearch_r1.config import ProtocolConfig, RewardConfig
from mmsearch_r1.protocol import Action
from mmsearch_r1.reward import compute_reward, normalize_answer, normalize_answer_original
from mmsearch_r1.turns import TurnState, allowed_actions, next_step, parse

ORIG = ProtocolConfig(
    profile="original", max_searches=3, max_text_searches=2, image_search_first_turn_only=False
)
DEF = ProtocolConfig()
ANS = "<reason>r</reason><answer>Paris</answer>"
IMG = "<reason>r</reason><search><img></search>"
TXT = "<reason>r</reason><text_search>eiffel tower</text_search>"


def _expected(
    acc: float, fmt: float, n: int, per_search: bool = False, a: float = 0.1, p: float = 0.1
) -> float:
    penalty = ((1 - p) ** n if per_search else 1 - p) if (acc and n) else 1.0
    return (1 - a) * acc * penalty + a * fmt


# (name, turns, gold, per_search, (acc, format, n_searches) original, (acc, format, n_searches) default)
CASES = [
    (
        "text between tags",
        ["<reason>r</reason> so: <answer>Paris</answer>"],
        ["Paris"],
        False,
        (1, 1, 0),
        (1, 0, 0),
    ),
    ("empty reason", ["<reason></reason><answer>Paris</answer>"], ["Paris"], False, (1, 1, 0), (1, 0, 0)),
    (
        "image tag inside the reasoning of a one-turn answer",
        ["<reason>no <search><img></search> now</reason><answer>Paris</answer>"],
        ["Paris"],
        False,
        (1, 0, 1),
        (1, 0, 0),
    ),
    (
        "answer tag mentioned in a search turn's reasoning",
        ["<reason>before the <answer> I search</reason><search><img></search>", ANS],
        ["Paris"],
        False,
        (1, 0, 1),
        (1, 0, 0),
    ),
    (
        "search turn without reasoning",
        ["<search><img></search>", ANS],
        ["Paris"],
        False,
        (1, 0, 1),
        (1, 0, 0),
    ),
    (
        "unicode punctuation kept",
        ["<reason>r</reason><answer>“Paris”</answer>"],
        ["Paris"],
        False,
        (0, 1, 0),
        (1, 1, 0),
    ),
    (
        "casefold and NFKC not applied",
        ["<reason>r</reason><answer>Ｐａｒｉｓ</answer>"],
        ["Paris"],
        False,
        (0, 1, 0),
        (1, 1, 0),
    ),
    (
        "answer normalises to empty, gold too",
        ["<reason>r</reason><answer>The</answer>"],
        ["a"],
        False,
        (1, 1, 0),
        (0, 1, 0),
    ),
    (
        "empty answer matches an empty gold",
        ["<reason>r</reason><answer></answer>"],
        ["an"],
        False,
        (1, 1, 0),
        (0, 0, 0),
    ),
    (
        "nested answer tags read from the first opener",
        ["<reason>r</reason><answer>x <answer>Paris</answer>"],
        ["Paris"],
        False,
        (0, 0, 0),
        (1, 0, 0),
    ),
    (
        "per-search penalty counts malformed searches",
        ["<search><img></search>", "<text_search>q</text_search>", ANS],
        ["Paris"],
        True,
        (1, 0, 2),
        (1, 0, 0),
    ),
    ("per-search penalty, well formed", [IMG, TXT, ANS], ["Paris"], True, (1, 1, 2), (1, 1, 2)),
    (
        "search tags in the final turn are not counted",
        [TXT, "<reason>after <text_search>q</text_search></reason><answer>Paris</answer>"],
        ["Paris"],
        True,
        (1, 0, 1),
        (1, 0, 1),
    ),
    ("text search then image search", [TXT, IMG, ANS], ["Paris"], False, (1, 0, 2), (1, 0, 2)),
    ("two text searches", [TXT, TXT, ANS], ["Paris"], False, (1, 0, 2), (1, 0, 2)),
    ("four turns", [IMG, TXT, TXT, ANS], ["Paris"], False, (1, 0, 3), (1, 0, 3)),
]


@pytest.mark.parametrize("name, turns, gold, per_search, orig, default", CASES, ids=[c[0] for c in CASES])
def test_reward_profiles(name, turns, gold, per_search, orig, default) -> None:
    rcfg = RewardConfig(penalty_per_search=per_search)
    for pcfg, (acc, fmt, n) in ((ORIG, orig), (DEF, default)):
        out = compute_reward(turns, gold, rcfg, pcfg)
        got = (out.components["acc"], out.components["format"], out.components["n_searches"])
        assert got == (acc, fmt, n), f"{name} under {pcfg.profile}"
        assert out.total == pytest.approx(_expected(acc, fmt, n, per_search))


def test_normalisations_differ_where_documented() -> None:
    assert (
        normalize_answer_original("The Eiffel-Tower!")
        == "eiffeltower"
        == normalize_answer("The Eiffel-Tower!")
    )
    assert normalize_answer_original("« the Louvre »") == "« louvre »"
    assert normalize_answer("« the Louvre »") == "louvre"
    assert normalize_answer_original("Straße") == "straße" and normalize_answer("Straße") == "strasse"
    assert normalize_answer_original("the«x") == "«x"  # word boundary before «: the article goes


def test_subem_original_empty_gold_matches_anything() -> None:
    out = compute_reward(
        ["<reason>r</reason><answer>Rome</answer>"], ["The"], RewardConfig(mode="SubEM"), ORIG
    )
    assert out.components["acc"] == 1.0
    out = compute_reward(
        ["<reason>r</reason><answer>Rome</answer>"], ["The"], RewardConfig(mode="SubEM"), DEF
    )
    assert out.components["acc"] == 0.0


# ----------------------------------------------------------------------------------------------- turn rules
@pytest.mark.parametrize(
    "text, kind, content",
    [
        ("<search><img></search>", "image_search", ""),
        ("thinking... <search><img></search>\n", "image_search", ""),
        ("<reason>r</reason><search><img></search> ", "invalid", ""),  # trailing space: not at the end
        ("<reason>r</reason><search> <img> </search>", "invalid", ""),
        ("x <text_search>a</text_search> y <text_search>b c</text_search>", "text_search", "b c"),
        ("<reason>r</reason><text_search>two\nlines</text_search>", "invalid", ""),
        ("<reason>r</reason><text_search></text_search>", "invalid", ""),
        ("<answer>Paris</answer>", "answer", "Paris"),
        ("<reason>r</reason><answer> Paris </answer> trailing", "answer", "Paris"),
        ("<reason>r</reason> I do not know", "invalid", ""),
    ],
)
def test_parse_original(text: str, kind: str, content: str) -> None:
    action = parse(text, ORIG)
    assert (action.kind, action.content) == (kind, content)


def test_next_step_original_vs_default() -> None:
    start = TurnState()
    # a search without <reason>: carried out by the original, refused by the default
    assert next_step(start, parse("<search><img></search>", ORIG), ORIG).kind == "search"
    assert next_step(start, parse("<search><img></search>", DEF), DEF).kind == "refuse"
    # a turn with no action: the original ends the trajectory, the default answers with a refusal turn
    out = next_step(start, parse("I am not sure.", ORIG), ORIG)
    assert (out.kind, out.finish) == ("finish", "no_action")
    assert next_step(start, parse("I am not sure.", DEF), DEF).kind == "refuse"
    # an answer without <reason>: the original ends with it
    assert next_step(start, parse("<answer>Paris</answer>", ORIG), ORIG).kind == "answer"
    # over a limit (second image search) before the last turn: finish vs refusal
    state = TurnState((Action("image_search"),), 1)
    out = next_step(state, Action("image_search"), ORIG)
    assert (out.kind, out.finish) == ("finish", "tool_limit")
    assert next_step(state, Action("image_search"), DEF).kind == "refuse"
    # image search after the first turn is carried out (no first-turn rule in the released settings)
    assert (
        next_step(TurnState((Action("text_search", "q"),), 1), Action("image_search"), ORIG).kind == "search"
    )
    # a search on the last turn ends the trajectory
    last = TurnState((), ORIG.max_turns - 1)
    assert next_step(last, Action("text_search", "q"), ORIG).finish == "tool_limit"
    assert allowed_actions(last, ORIG) == ["answer"]
    assert allowed_actions(TurnState(), ORIG) == ["answer", "image_search", "text_search"]


def test_format_reason_and_doctests() -> None:
    assert po.format_check_original([IMG, ANS]).ok
    check = po.format_check_original(["<search><img></search>", ANS])
    assert not check.ok and check.reason and check.reason.startswith("turn 1")
    assert doctest.testmod(po).failed == 0


def test_unknown_profile_is_an_error() -> None:
    with pytest.raises(ValueError, match="protocol.profile"):
        next_step(TurnState(), Action("answer", "x"), ProtocolConfig(profile="paper"))


def test_cli_reward_score_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.jsonl"
    rows = [{"id": "a", "turns": ["<search><img></search>", ANS], "gold": ["Paris"]}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    outs = {}
    for profile in ("default", "original"):
        assert main(["reward", "score", str(src), "--profile", profile]) == 0
        outs[profile] = json.loads(capsys.readouterr().out)
    assert outs["original"]["total"] == pytest.approx(_expected(1, 0, 1))
    assert outs["original"]["n_searches"] == 1.0 and outs["default"]["n_searches"] == 0.0
    assert outs["original"]["format_error"].startswith("turn 1 (image_search)")
