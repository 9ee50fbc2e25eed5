"""Rule-based reward: normalization, EM/SubEM, candidate parsing, every reachable value, warm-up schedule."""

from __future__ import annotations

import doctest

import pytest

import mmsearch_r1.reward.normalize as normalize_mod
import mmsearch_r1.reward.outcome as outcome_mod
from mmsearch_r1.config import ProtocolConfig, RewardConfig
from mmsearch_r1.reward import (
    compute_reward,
    exact_match,
    gold_list,
    normalize_answer,
    parse_candidates,
    search_penalty_at,
    sub_exact_match,
)
from mmsearch_r1.types import Answers

ANS = "<reason>I know this landmark.</reason><answer>The Eiffel Tower</answer>"
WRONG = "<reason>I think so.</reason><answer>Big Ben</answer>"
IMG = "<reason>Let me look it up.</reason><search><img></search>"
TXT = "<reason>Need more.</reason><text_search>tall iron tower paris</text_search>"
BROKEN_ANS = "<answer>The Eiffel Tower</answer>"  # no reasoning: format 0, answer still read
GOLD = ["Eiffel Tower", "La tour Eiffel"]


def _r(turns: list[str], gold=GOLD, step: int | None = None, **kw) -> dict[str, float]:
    return compute_reward(turns, gold, RewardConfig(**kw), ProtocolConfig(), step=step).to_dict()


def test_doctests_run() -> None:
    for mod in (normalize_mod, outcome_mod):
        result = doctest.testmod(mod)
        assert result.attempted >= 2 and result.failed == 0, mod.__name__


# ------------------------------------------------------------------------------------------------ normalization
@pytest.mark.parametrize(
    "raw, norm",
    [
        ("Eiffel Tower", "eiffel tower"),
        ("  THE   Eiffel\tTower. ", "eiffel tower"),
        ("A cat, an owl & the dog!", "cat owl dog"),
        ("Theater Anathema", "theater anathema"),  # articles only as whole words
        ("the", ""),
        ("U.S.A.", "usa"),
        ("New-York", "newyork"),  # punctuation is deleted, not replaced by a space
        ("“Quoted” — text…", "quoted text"),  # unicode quotes, em dash, ellipsis
        ("Ｐａｒｉｓ", "paris"),  # full-width letters (NFKC)
        ("Straße", "strasse"),  # casefold
        ("Café\u00a0Müller", "café müller"),  # accents kept, NBSP is whitespace
        ("line\nbreak\r\n end", "line break end"),
        ("$100 + 5%", "100 5"),
        ("1,000", "1000"),
    ],
)
def test_normalize(raw: str, norm: str) -> None:
    assert normalize_answer(raw) == norm


def test_exact_match() -> None:
    assert exact_match("the eiffel tower.", GOLD)
    assert exact_match("LA TOUR EIFFEL", GOLD)
    assert exact_match("Eiffel Tower", "Eiffel Tower")  # a single gold string
    assert not exact_match("Eiffel Tower in Paris", GOLD)
    assert not exact_match(None, GOLD)
    assert not exact_match("", [""])  # empty prediction never matches
    assert not exact_match("the", ["a"])  # both normalize to ""
    assert not exact_match("Eiffel", GOLD)


def test_sub_exact_match() -> None:
    assert sub_exact_match("It is the Eiffel Tower, in Paris.", GOLD)
    assert not sub_exact_match("Eiffel", GOLD)  # the gold must be inside the prediction, not the reverse
    assert sub_exact_match("concatenate", ["cat"])  # character-level substring, as in the paper
    assert not sub_exact_match("anything at all", ["The", ""])  # empty golds are ignored
    assert not sub_exact_match(None, GOLD)
    assert not sub_exact_match("  ", GOLD)


def test_parse_candidates() -> None:
    assert parse_candidates(["a", " b ", "", None, 3]) == ["a", "b", "3"]
    assert parse_candidates(("x",)) == ["x"]
    assert parse_candidates('["Paris", "paris, France"]') == ["Paris", "paris, France"]
    assert parse_candidates(b'["Paris"]') == ["Paris"]
    assert parse_candidates("[]") == []
    assert parse_candidates('"Paris"') == ["Paris"]
    assert parse_candidates("Paris") == ["Paris"]
    assert parse_candidates("  Paris, France ") == ["Paris, France"]
    assert parse_candidates("[not json") == ["[not json"]
    assert parse_candidates("42") == ["42"]
    assert parse_candidates('{"a": 1}') == ['{"a": 1}']
    assert parse_candidates(None) == []
    assert parse_candidates("   ") == []
    with pytest.raises(ValueError, match="candidate answer 1 must be a string"):
        parse_candidates(["ok", {"a": 1}])
    with pytest.raises(ValueError, match="candidate answer 0"):
        parse_candidates('[["nested"]]')
    with pytest.raises(ValueError, match="must be a list or a string"):
        parse_candidates(3.5)


def test_parse_candidates_numpy_array() -> None:
    np = pytest.importorskip("numpy")
    assert parse_candidates(np.array(["a", "b"], dtype=object)) == ["a", "b"]
    assert parse_candidates(np.array([1, 2])) == ["1", "2"]


def test_gold_list() -> None:
    assert gold_list(Answers("Eiffel Tower", ["La tour Eiffel", "Eiffel Tower"])) == GOLD
    assert gold_list('["x", "y"]') == ["x", "y"]
    with pytest.raises(ValueError, match="no gold answers"):
        gold_list([])
    with pytest.raises(ValueError, match="no gold answers"):
        gold_list(Answers(" ", []))


# ------------------------------------------------------------------------------- every reachable reward value
@pytest.mark.parametrize(
    "turns, total, acc, fmt, n",
    [
        ([ANS], 0.9 * 1.0 * 1.0 + 0.1 * 1, 1, 1, 0),  # 1.0
        ([IMG, ANS], 0.9 * 1.0 * 0.9 + 0.1 * 1, 1, 1, 1),  # 0.91
        ([TXT, ANS], 0.9 * 1.0 * 0.9 + 0.1 * 1, 1, 1, 1),  # 0.91
        ([IMG, TXT, ANS], 0.9 * 1.0 * 0.9 + 0.1 * 1, 1, 1, 2),  # 0.91: penalty once per trajectory
        ([BROKEN_ANS], 0.9 * 1.0 * 1.0 + 0.1 * 0, 1, 0, 0),  # 0.90
        ([TXT, IMG, ANS], 0.9 * 1.0 * 0.9 + 0.1 * 0, 1, 0, 2),  # 0.81: wrong order
        ([IMG, IMG, ANS], 0.9 * 1.0 * 0.9 + 0.1 * 0, 1, 0, 2),  # 0.81: image twice
        ([IMG, BROKEN_ANS], 0.9 * 1.0 * 0.9 + 0.1 * 0, 1, 0, 1),  # 0.81: searched, last turn broken
        ([WRONG], 0.9 * 0 + 0.1 * 1, 0, 1, 0),  # 0.10
        ([IMG, TXT, WRONG], 0.9 * 0 + 0.1 * 1, 0, 1, 2),  # 0.10: no penalty when wrong
        ([IMG, TXT], 0.0, 0, 0, 2),  # no answer at all
        ([ANS, ANS], 0.9 * 1.0 + 0.1 * 0, 1, 0, 0),  # 0.90: answered then went on
        ([TXT, TXT, WRONG], 0.0, 0, 0, 2),
    ],
)
def test_reachable_values(turns: list[str], total: float, acc: int, fmt: int, n: int) -> None:
    out = _r(turns)
    assert out["total"] == pytest.approx(total)
    assert out["acc"] == acc and out["format"] == fmt and out["n_searches"] == n
    assert out["n_image_searches"] + out["n_text_searches"] == n


def test_reachable_value_set_is_exactly_the_papers() -> None:
    pool = [ANS, WRONG, IMG, TXT, BROKEN_ANS, "junk"]
    seen = set()
    for a in pool:
        for b in pool:
            for c in pool:
                for turns in ([a], [a, b], [a, b, c]):
                    seen.add(round(_r(turns)["total"], 9))
    assert seen == {1.0, 0.91, 0.9, 0.81, 0.1, 0.0}


def test_components() -> None:
    out = _r([IMG, TXT, ANS])
    assert out == pytest.approx(
        {
            "total": 0.91,
            "acc": 1.0,
            "format": 1.0,
            "penalty": 0.9,
            "search_penalty": 0.1,
            "n_searches": 2.0,
            "n_image_searches": 1.0,
            "n_text_searches": 1.0,
            "answered": 1.0,
        }
    )
    assert _r([IMG, TXT])["answered"] == 0.0
    assert _r([WRONG])["penalty"] == 1.0


def test_penalty_per_search() -> None:
    assert _r([IMG, ANS], penalty_per_search=True)["total"] == pytest.approx(0.9 * 0.9 + 0.1)  # 0.91
    out = _r([IMG, TXT, ANS], penalty_per_search=True)
    assert out["total"] == pytest.approx(0.9 * 0.9**2 + 0.1)  # 0.829
    assert out["penalty"] == pytest.approx(0.81)
    assert _r([TXT, IMG, ANS], penalty_per_search=True)["total"] == pytest.approx(0.9 * 0.81)  # 0.729
    assert _r([ANS], penalty_per_search=True)["total"] == pytest.approx(1.0)
    assert _r([IMG, TXT, WRONG], penalty_per_search=True)["total"] == pytest.approx(0.1)


def test_subem_mode_and_weights() -> None:
    long_ans = "<reason>x</reason><answer>It is the Eiffel Tower in Paris</answer>"
    assert _r([long_ans])["total"] == pytest.approx(0.1)  # EM: wrong
    assert _r([long_ans], mode="SubEM")["total"] == pytest.approx(1.0)
    assert _r([IMG, ANS], format_weight=0.0)["total"] == pytest.approx(0.9)
    assert _r([IMG, ANS], format_weight=0.5, search_penalty=0.2)["total"] == pytest.approx(0.5 * 0.8 + 0.5)
    assert _r([ANS], gold=Answers("la tour eiffel", ["x"]))["acc"] == 0.0
    assert _r([ANS], gold=Answers("la tour eiffel", ["x", "eiffel tower"]))["acc"] == 1.0  # a candidate
    assert _r([ANS], gold='["eiffel tower"]')["acc"] == 1.0


def test_bad_config_and_gold() -> None:
    with pytest.raises(ValueError, match="reward.mode"):
        _r([ANS], mode="F1")
    with pytest.raises(ValueError, match="format_weight"):
        _r([ANS], format_weight=1.5)
    with pytest.raises(ValueError, match="no gold answers"):
        _r([ANS], gold=[])


# ------------------------------------------------------------------------------------------- warm-up schedule
def test_search_penalty_schedule() -> None:
    cfg = RewardConfig(search_penalty=0.1, penalty_warmup_steps=4, penalty_warmup_start=-0.1)
    values = [search_penalty_at(s, cfg) for s in range(7)]
    assert values == pytest.approx([-0.1, -0.05, 0.0, 0.05, 0.1, 0.1, 0.1])
    assert search_penalty_at(None, cfg) == pytest.approx(0.1)
    assert search_penalty_at(3, RewardConfig(search_penalty=0.2)) == pytest.approx(0.2)  # no warm-up
    with pytest.raises(ValueError, match="step"):
        search_penalty_at(-1, cfg)
    with pytest.raises(ValueError, match="penalty_warmup_steps"):
        search_penalty_at(1, RewardConfig(penalty_warmup_steps=-2))


def test_warmup_reward_values() -> None:
    kw = dict(penalty_warmup_steps=10, penalty_warmup_start=-0.1)
    out = _r([IMG, ANS], step=0, **kw)
    assert out["search_penalty"] == pytest.approx(-0.1)
    assert out["total"] == pytest.approx(0.9 * 1.1 + 0.1)  # a bonus: 1.09
    assert _r([IMG, ANS], step=5, **kw)["total"] == pytest.approx(1.0)  # p = 0 halfway
    assert _r([IMG, ANS], step=10, **kw)["total"] == pytest.approx(0.91)
    assert _r([IMG, ANS], step=99, **kw)["total"] == pytest.approx(0.91)
    assert _r([IMG, TXT, ANS], step=0, penalty_per_search=True, **kw)["total"] == pytest.approx(
        0.9 * 1.21 + 0.1
    )
    assert _r([ANS], step=0, **kw)["total"] == pytest.approx(1.0)  # no search, no bonus
