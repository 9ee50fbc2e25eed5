"""Sanitizing untrusted text: control tokens and protocol tags (any case/spacing) go, the words stay."""

from __future__ import annotations

import pytest

from mmsearch_r1.protocol import PROTOCOL_TAG_NAMES
from mmsearch_r1.tools.sanitize import sanitize, strip_control


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("a<|im_start|>b", "a b"),
        ("x <| endoftext |> y", "x y"),
        ("<ANSWER >42</ answer>", "42"),
        ("<search><img></search>", ""),
        ("<Information/>done", "done"),
        ("<text_search>q</TEXT_SEARCH>", "q"),
        ("<ans<answer>wer>y", "<ans wer>y"),  # no tag is formed by joining the pieces
        ("<|im_<|x|>start|>", "im_ start"),
        ("dangling <| pipe", "dangling pipe"),
        ("pipe |> end", "pipe end"),
        ("<| and |>", ""),  # anything between <| and |> counts as a control token
        ("a < b > c, x<y", "a < b > c, x<y"),  # ordinary angle brackets stay
        ("<think>hmm</think> <tool_call>{}</tool_call>", "hmm {}"),
        ("  many \n\t spaces ", "many spaces"),
        (None, ""),
    ],
)
def test_sanitize(raw, clean):
    assert sanitize(raw) == clean


@pytest.mark.parametrize("name", PROTOCOL_TAG_NAMES)
def test_every_protocol_tag_is_removed(name):
    for form in (f"<{name}>", f"</{name}>", f"< /{name.upper()} >", f"<{name}/>"):
        assert strip_control(f"a{form}b").split() == ["a", "b"]


def test_caps_and_newlines():
    assert sanitize("abcdef", max_chars=4) == "abc\u2026"
    assert sanitize("line 1\n\n  line   2", keep_newlines=True) == "line 1\nline 2"
