"""`world.diagnose.tail_chain`: where tail answers break, counted from evaluation records shaped as
`eval/*/samples.jsonl` writes them (turn texts and tool observations)."""

from __future__ import annotations

import json

import pytest

from mmsearch_r1.world.diagnose import tail_chain

IMAGE_OBS = "<information><image>1. Nukon Dotal - statue\n<image>2. Nukon Dotal - statue\n</information>"
TEXT_OBS = "<information>1. Nukon Dotal\nSummary: Nukon Dotal is in the city of Wyvik.\n</information>"


def _rec(source, question, em, texts, observations):
    turns = [{"text": t, "observation": o} for t, o in zip(texts, observations, strict=True)]
    return {"data_source": source, "question": question, "em": em, "turns": turns}


def _search(reason_name, query, answer):
    return [
        "<reason> Unknown: I will search with the image.</reason><search><img></search>",
        f"<reason>The first result is {reason_name}.</reason><text_search> {query}</text_search>",
        f"<reason>The page about {query} says it.</reason><answer> {answer}</answer>",
    ], [IMAGE_OBS, TEXT_OBS, ""]


def test_tail_chain_counts_each_break(tmp_path):
    recs = [
        _rec(
            "world_tail",
            "In which city is this statue?",
            True,
            *_search("Nukon Dotal", "Nukon Dotal", "Wyvik"),
        ),
        _rec(
            "world_tail",
            "In which city is this statue?",
            False,
            *_search("Nukon Dotal", "Don Dotal", "Gymouth"),
        ),
        _rec("world_tail", "Who made this statue?", False, *_search("Vul Dotal", "Vul Dotal", "Coyard")),
        _rec(
            "world_tail",
            "What is the name of this statue?",
            True,
            [
                "<search><img></search>",
                "<reason>The first result is Nukon Dotal.</reason><answer> Nukon Dotal</answer>",
            ],
            [IMAGE_OBS, ""],
        ),
        _rec("world_head", "What is the name of this statue?", True, ["<answer> X</answer>"], [""]),
    ]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert tail_chain(path) == {
        "name_n": 1,
        "name_copied": 1,
        "name_right": 1,
        "fact_n": 3,
        "fact_copied": 2,
        "fact_query_ok": 1,
        "fact_right": 1,
        "fact_right_when_query_ok": 1,
    }


def test_bad_record_names_the_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"data_source": "world_tail"}) + "\n\n{oops\n")
    with pytest.raises(ValueError, match=r"samples.jsonl:1: not an evaluation record"):
        tail_chain(path)
