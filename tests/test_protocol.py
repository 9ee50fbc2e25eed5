"""Turn protocol: parsing one turn, per-action limits, whole-trajectory format rules."""

from __future__ import annotations

import doctest
import itertools

import pytest

import mmsearch_r1.protocol as protocol
from mmsearch_r1.config import ProtocolConfig
from mmsearch_r1.protocol import (
    PROTOCOL_TAG_NAMES,
    Action,
    check_action,
    count_searches,
    extract_final_answer,
    parse_turn,
    validate_turns,
)

ANS = "<reason>I know it.</reason><answer>Paris</answer>"
IMG = "<reason>I need to see similar images.</reason><search><img></search>"
TXT = "<reason>I need facts.</reason><text_search>eiffel tower height</text_search>"
TURN = {"A": ANS, "I": IMG, "T": TXT}


def test_tag_names() -> None:
    assert PROTOCOL_TAG_NAMES == ("reason", "answer", "search", "img", "text_search", "information")


def test_doctests() -> None:
    result = doctest.testmod(protocol)
    assert result.attempted >= 4 and result.failed == 0


# ------------------------------------------------------------------------------------------ parse_turn: valid
@pytest.mark.parametrize(
    "text, kind, content",
    [
        (ANS, "answer", "Paris"),
        (IMG, "image_search", ""),
        (TXT, "text_search", "eiffel tower height"),
        ("  \n<reason>x</reason>\n\n<answer>  Paris  </answer>\n<|im_end|>\n", "answer", "Paris"),
        ("<reason>x</reason><answer>Paris</answer><|im_end|><|endoftext|>", "answer", "Paris"),
        ("<reason>line 1\nline 2\n</reason><answer>New\nYork</answer>", "answer", "New\nYork"),
        ("<reason>x</reason><text_search>\n two\nlines \n</text_search>", "text_search", "two\nlines"),
        ("<reason>x</reason><search> <img>\n</search>", "image_search", ""),
        ("<reason>a < b and <b>bold</b></reason><answer>x <= y</answer>", "answer", "x <= y"),
        ("<reason>x</reason><answer><Answer>Paris</answer>", "answer", "<Answer>Paris"),
    ],
)
def test_parse_valid(text: str, kind: str, content: str) -> None:
    action = parse_turn(text)
    assert action == Action(kind, content, None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- parse_turn: invalid
@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "the turn is empty"),
        ("  <|im_end|>", "the turn is empty"),
        ("<answer>Paris</answer>", "must start with <reason>"),
        ("Sure! <reason>x</reason><answer>Paris</answer>", "must start with <reason>"),
        ("<reason>x<answer>Paris</answer>", "tag <answer> inside <reason>"),
        ("<reason>x", "<reason> is not closed"),
        (
            "<reason>I could use <search><img></search></reason><answer>a</answer>",
            "tag <search> inside <reason>",
        ),
        ("<reason> \n </reason><answer>Paris</answer>", "the <reason> block is empty"),
        ("<reason>x</reason>", "no action after </reason>"),
        ("<reason>x</reason> The answer is Paris.", "no action after </reason>"),
        ("<reason>x</reason> so: <answer>Paris</answer>", "text between </reason> and the action"),
        ("<reason>x</reason><reason>y</reason><answer>Paris</answer>", "more than one <reason> block"),
        ("<reason>x</reason></answer>", "unexpected </answer>"),
        ("<reason>x</reason><img>", "<img> is not an action"),
        ("<reason>x</reason><answer>Paris", "<answer> is not closed"),
        ("<reason>x</reason><answer> \n </answer>", "the answer is empty"),
        ("<reason>x</reason><answer>Paris <reason>y</reason></answer>", "tag <reason> inside <answer>"),
        ("<reason>x</reason><text_search></text_search>", "the text search query is empty"),
        ("<reason>x</reason><text_search>q", "<text_search> is not closed"),
        ("<reason>x</reason><search></search>", "exactly <search><img></search>"),
        ("<reason>x</reason><search>eiffel tower</search>", "exactly <search><img></search>"),
        ("<reason>x</reason><search><img></img></search>", "no </img>"),
        ("<reason>x</reason><search><img> photo</search>", "exactly <search><img></search>"),
        ("<reason>x</reason><search><img>", "exactly <search><img></search>"),
        ("<reason>x</reason><answer>a</answer><answer>b</answer>", "more than one action"),
        ("<reason>x</reason><search><img></search><text_search>q</text_search>", "more than one action"),
        ("<reason>x</reason><answer>a</answer><reason>y</reason>", "<reason> block after the action"),
        (
            "<reason>x</reason><answer>a</answer> Hope this helps!",
            "text after the action ('Hope this helps!')",
        ),
        ("<reason>x</reason><answer>a</answer></reason>", "text after the action ('</reason>')"),
        ("<reason>x</reason><answer>a</answer><|im_end|>more", "text after the action"),
        (
            "<reason>x</reason><information>fake</information><answer>a</answer>",
            "<information> is written by",
        ),
    ],
)
def test_parse_invalid(text: str, fragment: str) -> None:
    action = parse_turn(text)
    assert action.kind == "invalid"
    assert action.content == ""
    assert action.reason is not None and fragment in action.reason


def test_parse_rejects_non_string() -> None:
    with pytest.raises(TypeError, match="expects a str"):
        parse_turn(None)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ check_action
def _a(kind: str) -> Action:
    return parse_turn(TURN[kind])


def test_check_action_defaults() -> None:
    cfg = ProtocolConfig()
    assert check_action([], _a("A"), 0, cfg) is None
    assert check_action([], _a("I"), 0, cfg) is None
    assert check_action([], _a("T"), 0, cfg) is None
    assert check_action([_a("I")], _a("T"), 1, cfg) is None
    assert check_action([_a("I")], _a("I"), 1, cfg) == "image search is only allowed in the first turn"
    assert check_action([_a("T")], _a("T"), 1, cfg) == "text search limit reached (1 of 1 used)"
    assert "an answer is due" in check_action([_a("I"), _a("T")], _a("T"), 2, cfg)  # type: ignore[operator]
    assert check_action([_a("I"), _a("T")], _a("A"), 2, cfg) is None
    assert "beyond the limit of 3" in check_action([_a("I"), _a("T"), _a("T")], _a("A"), 3, cfg)  # type: ignore[operator]
    bad = parse_turn("<reason>x</reason>")
    assert check_action([], bad, 0, cfg) == bad.reason
    with pytest.raises(ValueError, match="turn_index"):
        check_action([], _a("A"), -1, cfg)


def test_check_action_configurable_limits() -> None:
    # image search allowed later when not restricted to the first turn; per-kind limit then applies
    cfg = ProtocolConfig(max_turns=5, max_searches=4, image_search_first_turn_only=False)
    assert check_action([_a("T")], _a("I"), 1, cfg) is None
    assert check_action([_a("I")], _a("I"), 1, cfg) == "image search limit reached (1 of 1 used)"
    # total limit below the sum of per-kind limits
    cfg = ProtocolConfig(max_turns=5, max_searches=1, max_text_searches=3)
    assert check_action([_a("T")], _a("T"), 1, cfg) == "search limit reached (1 of 1 used)"
    # refused/invalid turns in between: turn_index counts turns, `previous` only carried-out actions
    cfg = ProtocolConfig()
    assert check_action([], _a("I"), 1, cfg) == "image search is only allowed in the first turn"
    assert check_action([parse_turn("junk")], _a("T"), 1, cfg) is None
    # no searches at all
    cfg = ProtocolConfig(max_searches=0)
    assert check_action([], _a("T"), 0, cfg) == "search limit reached (0 of 0 used)"


# ---------------------------------------------------------------------------------------------- validate_turns
def _all_sequences(max_len: int) -> list[str]:
    return ["".join(p) for n in range(1, max_len + 1) for p in itertools.product("AIT", repeat=n)]


def test_default_allows_exactly_the_four_paper_sequences() -> None:
    cfg = ProtocolConfig()
    valid = {s for s in _all_sequences(4) if validate_turns([TURN[k] for k in s], cfg).ok}
    assert valid == {"A", "IA", "TA", "ITA"}


def test_released_script_limits_allow_two_text_searches() -> None:
    cfg = ProtocolConfig(max_turns=4, max_searches=3, max_image_searches=1, max_text_searches=2)
    valid = {s for s in _all_sequences(5) if validate_turns([TURN[k] for k in s], cfg).ok}
    assert valid == {"A", "IA", "TA", "ITA", "TTA", "ITTA"}


@pytest.mark.parametrize(
    "seq, fragment",
    [
        ("TIA", "turn 2: image search is only allowed in the first turn"),
        ("IIA", "turn 2: image search is only allowed in the first turn"),
        ("TTA", "turn 2: text search limit reached"),
        ("ITT", "turn 3: this is the last allowed turn"),
        ("AA", "turn 1: answered, but the trajectory went on"),
        ("IT", "turn 2: the last turn is a search"),
        ("I", "turn 1: the last turn is a search"),
        ("ITAA", "4 assistant turns, more than max_turns=3"),
    ],
)
def test_invalid_sequences(seq: str, fragment: str) -> None:
    check = validate_turns([TURN[k] for k in seq], ProtocolConfig())
    assert not check.ok
    assert check.reason is not None and fragment in check.reason
    assert [a.kind for a in check.actions] == [_a(k).kind for k in seq]


def test_validate_reports_bad_turn_and_empty() -> None:
    check = validate_turns([IMG, "<reason>x</reason><answer>a</answer> extra"], ProtocolConfig())
    assert not check.ok and check.reason is not None
    assert check.reason.startswith("turn 2: text after the action")
    assert validate_turns([], ProtocolConfig()).reason == "no assistant turns"
    ok = validate_turns([IMG, TXT, ANS + "<|im_end|>"], ProtocolConfig())
    assert (
        ok.ok
        and ok.reason is None
        and [a.kind for a in ok.actions] == ["image_search", "text_search", "answer"]
    )


# ------------------------------------------------------------------------------------------------------ helpers
def test_extract_final_answer() -> None:
    assert extract_final_answer([ANS]) == "Paris"
    assert extract_final_answer([IMG, "<reason>x</reason><answer>\n Rome \n</answer>"]) == "Rome"
    # broken format still yields the last answer of the last turn
    assert extract_final_answer(["<answer>A</answer> and then <answer>B</answer> trailing"]) == "B"
    assert extract_final_answer(["<answer><answer>C</answer>"]) == "C"
    # only the last turn counts
    assert extract_final_answer([ANS, IMG]) is None
    assert extract_final_answer(["<reason>x</reason><answer>unclosed"]) is None
    assert extract_final_answer(["</answer> then <answer>"]) is None
    assert extract_final_answer(["<answer>  </answer>"]) is None
    assert extract_final_answer([]) is None


def test_count_searches() -> None:
    actions = [_a("I"), _a("T"), _a("T"), parse_turn("bad"), _a("A")]
    assert count_searches(actions) == (1, 2)
    assert count_searches([]) == (0, 0)
    assert _a("I").is_search and _a("T").is_search and not _a("A").is_search
