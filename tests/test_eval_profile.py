"""Evaluation records follow the protocol profile: under `original` the final answer, EM and SubEM use the
released code's rules, as its reward does (docs/protocol_and_reward.md)."""

from __future__ import annotations

from types import SimpleNamespace

from mmsearch_r1.config import ProtocolConfig, RewardConfig
from mmsearch_r1.eval.summary import sample_record
from mmsearch_r1.reward import compute_reward
from mmsearch_r1.types import Answers, Sample


def _traj(texts: list[str]) -> SimpleNamespace:
    return SimpleNamespace(
        assistant_texts=texts,
        to_json=lambda: {"turns": [], "images": []},
        turns=[],
        finish_reason="answer",
        error=None,
        n_image_searches=0,
        n_text_searches=0,
        prompt_ids=[1, 2],
        response_ids=[3],
        n_sampled_tokens=1,
    )


def _record(texts: list[str], gold: str, profile: str) -> dict:
    sample = Sample("s0", "q?", [], Answers(gold, []), "src", None)
    pcfg = ProtocolConfig(profile=profile)
    reward = compute_reward(texts, sample.answers, RewardConfig(), pcfg)
    return sample_record(sample, _traj(texts), reward, profile=profile), reward


def test_record_matches_like_the_profiles_reward() -> None:
    texts = ["<reason>r</reason><answer>\u201cLouvre\u201d</answer>"]  # curly quotes around the answer
    default, r_default = _record(texts, "Louvre", "default")
    original, r_original = _record(texts, "Louvre", "original")
    assert default["em"] is True and r_default.components["acc"] == 1.0  # default drops Unicode punctuation
    assert original["em"] is False and r_original.components["acc"] == 0.0  # the original keeps it
    assert original["subem"] is True  # "louvre" is inside "\u201clouvre\u201d"


def test_empty_answer_is_an_answer_only_under_original() -> None:
    texts = ["<reason>r</reason><answer> </answer>"]
    default, _ = _record(texts, "x", "default")
    original, _ = _record(texts, "x", "original")
    assert default["final_answer"] is None
    assert original["final_answer"] == ""
