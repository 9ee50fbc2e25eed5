"""The turn protocol: tag names, parsing one assistant turn into an `Action`, and the format rules.

Wire format of one assistant turn (see docs/protocol_and_reward.md)::

    <reason> ...free text, may span lines... </reason>
    ONE action, which ends the turn:
        <answer>final answer</answer>
        <search><img></search>                 (image search with the question's own image)
        <text_search>a query</text_search>

Tool results come back in the next user turn inside `<information>...</information>`; the assistant never
writes that tag.

Three levels of checking:
- `parse_turn(text)`: is this one turn well formed? Returns the `Action` (or an "invalid" action with a reason).
- `check_action(previous, action, turn_index, cfg)`: is this well-formed action allowed now, given the limits of
  `ProtocolConfig`? Returns None or the reason it is refused (the agent loop shows it to the model).
- `validate_turns(turns, cfg)`: the whole trajectory, as the format reward sees it. With the paper defaults the
  only valid action sequences are [answer], [image, answer], [text, answer], [image, text, answer].
The last two, and what follows a turn (`next_step`), live in `turns.py` (re-exported here); the original
code's parsing rules (profile "original") are in `protocol_original.py`.

Choices this module makes where the paper is silent (all documented in `parse_turn`): whitespace is tolerated
between the tags of `<search><img></search>`; tags are case-sensitive; a protocol tag inside reasoning, an answer
or a query makes the turn invalid (no nesting); the reasoning, the answer and the query must be non-empty.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

# Every tag of the wire format. The tools strip these from web text so a page cannot forge an action.
PROTOCOL_TAG_NAMES: tuple[str, ...] = ("reason", "answer", "search", "img", "text_search", "information")

# Chat end markers a decoded turn may still carry at its end (removed before parsing, with whitespace).
END_MARKERS: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")

ActionKind = Literal["answer", "image_search", "text_search", "invalid"]

_TAG_RE = re.compile(r"<(/?)(" + "|".join(PROTOCOL_TAG_NAMES) + r")>")
_ACTION_OPENERS = {"answer": "answer", "search": "image_search", "text_search": "text_search"}
_ACTIONS_HINT = (
    "end the turn with <answer>...</answer>, <search><img></search> or <text_search>...</text_search>"
)


@dataclass
class Action:
    """One parsed assistant action.

    `content` is the answer text (answer), the query (text_search) or "" (image_search, invalid), stripped of
    surrounding whitespace. `reason` is set only for kind "invalid": a short sentence saying what is wrong,
    fit to be shown to the model in an observation.
    """

    kind: ActionKind
    content: str = ""
    reason: str | None = None

    @property
    def is_search(self) -> bool:
        return self.kind in ("image_search", "text_search")


@dataclass
class FormatCheck:
    """Result of `validate_turns`: ok, the parsed action of every turn, and the first problem found."""

    ok: bool
    actions: list[Action] = field(default_factory=list)
    reason: str | None = None


def _invalid(reason: str) -> Action:
    return Action("invalid", "", reason)


def strip_end_markers(text: str) -> str:
    """Remove trailing chat end markers (`<|im_end|>`, `<|endoftext|>`, repeated) and surrounding whitespace."""
    text = text.strip()
    changed = True
    while changed:
        changed = False
        for marker in END_MARKERS:
            if text.endswith(marker):
                text = text[: -len(marker)].rstrip()
                changed = True
    return text


def parse_turn(text: str) -> Action:
    """Parse one assistant turn (decoded text, chat special tokens removed) into an `Action`.

    Rules, in the order they are checked (the first broken rule is the `reason` of the invalid action):

    1. Leading/trailing whitespace and trailing `<|im_end|>` / `<|endoftext|>` markers are ignored.
    2. Tags are exactly `<name>` / `</name>` with a name from `PROTOCOL_TAG_NAMES`, lowercase, no spaces inside
       the brackets; anything else (`<Answer>`, `< answer >`, `<b>`) is plain text.
    3. The assistant never writes `<information>` or `</information>`.
    4. The turn starts with `<reason>` (nothing but whitespace before it) and the reasoning is closed by
       `</reason>`; it may span several lines but must contain some non-whitespace text and no protocol tag
       (tags do not nest). There is exactly one reasoning block.
    5. After `</reason>` comes, with only whitespace in between, exactly one action:
       - `<answer>TEXT</answer>`: TEXT (stripped, may span lines) must be non-empty and contain no tag;
       - `<search><img></search>`: whitespace between these three tags is tolerated
         (`<search>\\n<img>\\n</search>`); nothing else may be inside; there is no `</img>`;
       - `<text_search>QUERY</text_search>`: QUERY (stripped, may span lines) must be non-empty, no tag.
    6. The action ends the turn: after its closing tag only whitespace (and end markers, rule 1) may follow.
       A second action, a second reasoning block or any other text after the action makes the turn invalid.

    >>> parse_turn("<reason>I know this.</reason><answer> Paris </answer><|im_end|>")
    Action(kind='answer', content='Paris', reason=None)
    >>> parse_turn("<reason>Need the web.</reason>\\n<search><img></search>").kind
    'image_search'
    >>> parse_turn("<answer>Paris</answer>").reason
    'the turn must start with <reason>...</reason>'
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_turn expects a str, got {type(text).__name__}")
    text = strip_end_markers(text)
    if not text:
        return _invalid("the turn is empty")
    tokens = _tokenize(text)

    if any(name == "information" for kind, name, _ in tokens if kind != "text"):
        return _invalid("<information> is written by the search tools, never by the assistant")

    pos = _skip_space(tokens, 0)
    if pos >= len(tokens) or tokens[pos][:2] != ("open", "reason"):
        return _invalid("the turn must start with <reason>...</reason>")
    reasoning, pos, err = _read_block(tokens, pos, "reason", "the reasoning")
    if err:
        return _invalid(err)
    if not reasoning.strip():
        return _invalid("the <reason> block is empty")

    pos = _skip_space(tokens, pos)
    if pos >= len(tokens):
        return _invalid(f"no action after </reason>: {_ACTIONS_HINT}")
    kind, name, value = tokens[pos]
    if kind == "text":
        if not any(k == "open" and n in _ACTION_OPENERS for k, n, _ in tokens[pos:]):
            return _invalid(f"no action after </reason>: {_ACTIONS_HINT}")
        return _invalid(f"text between </reason> and the action ({_short(value)!r})")
    if kind == "close":
        return _invalid(f"unexpected </{name}> after </reason> without a matching <{name}>")
    if name == "reason":
        return _invalid("more than one <reason> block in one turn")
    if name not in _ACTION_OPENERS:
        return _invalid(f"<{name}> is not an action; {_ACTIONS_HINT}")

    if name == "search":
        action, pos = _read_image_search(tokens, pos)
    else:
        what = "the answer" if name == "answer" else "the text search query"
        content, pos, err = _read_block(tokens, pos, name, what)
        if err:
            return _invalid(err)
        content = content.strip()
        action = Action(_ACTION_OPENERS[name], content) if content else _invalid(f"{what} is empty")
    if action.kind == "invalid":
        return action

    pos = _skip_space(tokens, pos)
    if pos < len(tokens):
        kind, name, value = tokens[pos]
        if kind == "open" and name in _ACTION_OPENERS:
            return _invalid(f"more than one action in one turn (<{name}> after the first action)")
        if kind == "open" and name == "reason":
            return _invalid("a <reason> block after the action; the action must end the turn")
        shown = _short(value) if kind == "text" else f"<{'/' if kind == 'close' else ''}{name}>"
        return _invalid(f"text after the action ({shown!r}); the action must end the turn")
    return action


def extract_final_answer(turns: Sequence[str]) -> str | None:
    """The content of the last `<answer>...</answer>` in the LAST turn, stripped; None if absent or empty.

    Works on malformed turns too (the accuracy part of the reward is independent of the format part): the last
    `</answer>` is found, then the last `<answer>` before it. Earlier turns are not looked at.

    >>> extract_final_answer(["<reason>x</reason><search><img></search>", "junk <answer>A</answer><answer> B </answer>"])
    'B'
    """
    if not turns:
        return None
    text = turns[-1]
    end = text.rfind("</answer>")
    if end < 0:
        return None
    start = text.rfind("<answer>", 0, end)
    if start < 0:
        return None
    answer = text[start + len("<answer>") : end].strip()
    return answer or None


def count_searches(actions: Sequence[Action]) -> tuple[int, int]:
    """(number of image searches, number of text searches) among `actions` (invalid actions not counted)."""
    n_image = sum(1 for a in actions if a.kind == "image_search")
    n_text = sum(1 for a in actions if a.kind == "text_search")
    return n_image, n_text


def __getattr__(name: str) -> Any:
    """`check_action` and `validate_turns` moved to `turns.py`; they stay importable from here."""
    if name in ("check_action", "validate_turns"):
        from mmsearch_r1 import turns

        return getattr(turns, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------- helpers
_Token = tuple[str, str, str]  # (kind: "open" | "close" | "text", tag name or "", text value)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    last = 0
    for m in _TAG_RE.finditer(text):
        if m.start() > last:
            tokens.append(("text", "", text[last : m.start()]))
        tokens.append(("close" if m.group(1) else "open", m.group(2), m.group(0)))
        last = m.end()
    if last < len(text):
        tokens.append(("text", "", text[last:]))
    return tokens


def _skip_space(tokens: list[_Token], pos: int) -> int:
    while pos < len(tokens) and tokens[pos][0] == "text" and not tokens[pos][2].strip():
        pos += 1
    return pos


def _read_block(tokens: list[_Token], pos: int, name: str, what: str) -> tuple[str, int, str | None]:
    """tokens[pos] is <name>; read text up to </name>. Returns (content, position after </name>, error)."""
    pos += 1
    parts: list[str] = []
    while pos < len(tokens):
        kind, tname, value = tokens[pos]
        if kind == "text":
            parts.append(value)
        elif kind == "close" and tname == name:
            return "".join(parts), pos + 1, None
        else:
            return "", pos, f"tag {value} inside <{name}>: {what} may not contain protocol tags"
        pos += 1
    return "", pos, f"<{name}> is not closed with </{name}>"


def _read_image_search(tokens: list[_Token], pos: int) -> tuple[Action, int]:
    """tokens[pos] is <search>; expect [space] <img> [space] </search>."""
    pos = _skip_space(tokens, pos + 1)
    if pos >= len(tokens) or tokens[pos][:2] != ("open", "img"):
        return _invalid("image search must be exactly <search><img></search>"), pos
    pos = _skip_space(tokens, pos + 1)
    if pos >= len(tokens) or tokens[pos][:2] != ("close", "search"):
        return _invalid("image search must be exactly <search><img></search> (no query, no </img>)"), pos
    return Action("image_search"), pos + 1


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
