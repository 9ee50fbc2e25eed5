"""The released code's turn rules, for `ProtocolConfig.profile = "original"` (docs/protocol_and_reward.md).

Written from the documented behaviour (see the table of differences in the docs); nothing of the original is
copied. Compared with `protocol.parse_turn` these rules are loose where the default is strict:

- `parse_turn_original(text)`: a turn is an image search when its text ends with `<search><img></search>`, a
  text search when its last line ends with `<text_search>QUERY</text_search>` (QUERY on one line; the query is
  the last such block of the turn and may not be empty), whatever comes before; no `<reason>` is needed. A single
  trailing newline is allowed after the tag. Anything else is an answer when it holds `<answer>...</answer>`
  (the last one), else an invalid action: both end the trajectory.
- `format_check_original(turns)`: the format score is 1 only for four shapes of the whole trajectory: [answer],
  [image, answer], [text, answer], [image, text, answer]. Each turn (stripped) must start with `<reason>`,
  hold exactly one `<reason>` and one `</reason>`, and end with its action; the tags of the other actions may
  not appear in it. Text between `</reason>` and the action and an empty reasoning or answer are accepted.
- `search_counts_original(turns)`: searches counted for the penalty: a turn before the last (or the only turn)
  counts as an image search when it contains `<search><img></search>` and as a text search when it contains both
  `<text_search>` and `</text_search>`, whatever its format.
- `final_answer_original(turns)`: the last `<answer>...</answer>` of the last turn, stripped; "" when empty
  (an empty answer is still an answer), None when absent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mmsearch_r1.protocol import END_MARKERS, Action, FormatCheck, strip_end_markers

IMAGE_TAG = "<search><img></search>"
_TEXT_OPEN, _TEXT_CLOSE = "<text_search>", "</text_search>"
_TEXT_AT_END = re.compile(r"<text_search>.*</text_search>\n?\Z")  # "." stops at newlines: one line
_TEXT_QUERY = re.compile(r"<text_search>(.*?)</text_search>")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_SHAPE = {
    "answer": re.compile(r"<reason>.*</reason>.*<answer>.*</answer>\Z", re.DOTALL),
    "image_search": re.compile(r"<reason>.*</reason>.*<search><img></search>\Z", re.DOTALL),
    "text_search": re.compile(r"<reason>.*</reason>.*<text_search>.*</text_search>\Z", re.DOTALL),
}
_FORBIDDEN = {
    "answer": (IMAGE_TAG, _TEXT_OPEN, _TEXT_CLOSE),
    "image_search": ("<answer>", "</answer>", _TEXT_OPEN, _TEXT_CLOSE),
    "text_search": ("<answer>", "</answer>", IMAGE_TAG),
}
_ONCE = {
    "answer": ("<reason>", "</reason>", "<answer>", "</answer>"),
    "image_search": ("<reason>", "</reason>", IMAGE_TAG),
    "text_search": ("<reason>", "</reason>", _TEXT_OPEN, _TEXT_CLOSE),
}
SHAPES: tuple[tuple[str, ...], ...] = (
    ("answer",),
    ("image_search", "answer"),
    ("text_search", "answer"),
    ("image_search", "text_search", "answer"),
)


def _drop_end_markers(text: str) -> str:
    """Remove chat end markers at the end of a turn (only them: trailing whitespace stays significant)."""
    changed = True
    while changed:
        changed = False
        for marker in END_MARKERS:
            if text.endswith(marker):
                text = text[: -len(marker)]
                changed = True
    return text


def parse_turn_original(text: str) -> Action:
    """The action of one turn under the original's rules (module docstring).

    >>> parse_turn_original("no reasoning at all <search><img></search>").kind
    'image_search'
    >>> parse_turn_original("<reason>x</reason> <text_search>eiffel tower</text_search>\\n").content
    'eiffel tower'
    >>> parse_turn_original("I think <answer>Paris</answer> maybe").content
    'Paris'
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_turn_original expects a str, got {type(text).__name__}")
    text = _drop_end_markers(text)
    body = text[:-1] if text.endswith("\n") else text
    if body.endswith(IMAGE_TAG):
        return Action("image_search")
    if _TEXT_AT_END.search(text):
        queries = _TEXT_QUERY.findall(text)
        query = queries[-1] if queries else ""
        if not query:
            return Action("invalid", "", "the text search query is empty")
        return Action("text_search", query)
    answers = _ANSWER.findall(text)
    if answers:
        return Action("answer", answers[-1].strip())
    return Action("invalid", "", "the turn ends with no search and holds no <answer>...</answer>")


def _turn_shape_error(text: str, kind: str) -> str | None:
    """None if the stripped turn matches the shape of `kind`, else what is wrong."""
    if not _SHAPE[kind].match(text):
        return f"does not match <reason>...</reason>...{_shape_end(kind)} (start to end)"
    for tag in _ONCE[kind]:
        if text.count(tag) != 1:
            return f"{tag} appears {text.count(tag)} times, not once"
    for tag in _FORBIDDEN[kind]:
        if tag in text:
            return f"{tag} may not appear in a turn of kind {kind}"
    return None


def _shape_end(kind: str) -> str:
    return {
        "answer": "<answer>...</answer>",
        "image_search": IMAGE_TAG,
        "text_search": "<text_search>...</text_search>",
    }[kind]


def _clean(text: str) -> str:
    return strip_end_markers(text)


def format_check_original(turns: Sequence[str]) -> FormatCheck:
    """Format score 1 exactly for the four shapes (module docstring); `reason` names the first problem."""
    texts = [_clean(t) for t in turns]
    actions = [parse_turn_original(t) for t in texts]
    if not texts:
        return FormatCheck(False, actions, "no assistant turns")
    candidates = [s for s in SHAPES if len(s) == len(texts)]
    if not candidates:
        return FormatCheck(False, actions, f"{len(texts)} assistant turns: only 1, 2 or 3 turns can be valid")
    first_error = None
    for shape in candidates:
        for i, (text, kind) in enumerate(zip(texts, shape, strict=True)):
            err = _turn_shape_error(text, kind)
            if err is not None:
                first_error = first_error or f"turn {i + 1} ({kind}): {err}"
                break
        else:
            return FormatCheck(True, actions, None)
    return FormatCheck(False, actions, first_error)


def search_counts_original(turns: Sequence[str]) -> tuple[int, int]:
    """(image searches, text searches) counted for the penalty (module docstring)."""
    texts = [_clean(t) for t in turns]
    counted = texts[:-1] if len(texts) > 1 else texts
    n_image = sum(1 for t in counted if IMAGE_TAG in t)
    n_text = sum(1 for t in counted if _TEXT_OPEN in t and _TEXT_CLOSE in t)
    return n_image, n_text


def final_answer_original(turns: Sequence[str]) -> str | None:
    """The last `<answer>...</answer>` of the last turn, stripped ("" when empty); None when there is none.

    >>> final_answer_original(["<answer>A</answer> <answer>  </answer>"])
    ''
    """
    if not turns:
        return None
    answers = _ANSWER.findall(turns[-1])
    return answers[-1].strip() if answers else None
