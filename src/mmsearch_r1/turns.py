"""The one home of the turn rules: what happens after an assistant turn, under each protocol profile.

`next_step(state, action, cfg)` is a pure function from the trajectory's state (the searches carried out so far
and the 0-based index of this turn) and the parsed turn (`parse(text, cfg)`) to a typed `Outcome`:

- "answer": the trajectory ends with this answer (finish reason "answer");
- "search": the search is carried out, its result becomes the next user turn;
- "refuse": the action is not carried out; the next user turn says why (`Outcome.reason`);
- "finish": the trajectory ends without a further turn; `Outcome.finish` is the finish reason
  ("max_turns", "tool_limit" or "no_action") and `Outcome.reason` says why.

The agent loop, the SFT conversation builder and the prompts (what may come next) all ask this function, so the
rules exist once. Profiles (`ProtocolConfig.profile`):

- "default": `protocol.parse_turn` (strict format); a malformed or over-limit action is refused with a message
  and the model gets another turn, unless it was the last allowed turn ("max_turns" for a malformed turn,
  "tool_limit" for a search).
- "original": the released code's rules (`protocol_original`): a turn ending with a search tag is a search
  (no `<reason>` needed); a search over a limit or on the last turn ends the trajectory ("tool_limit"); any
  other turn ends it: "answer" when it holds `<answer>...</answer>`, else "no_action". Nothing is ever refused.

`check_action` (the default profile's limits) and `validate_turns` (the default profile's whole-trajectory
format rule) live here too; `format_check` picks the profile's format rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mmsearch_r1.config import ProtocolConfig
from mmsearch_r1.protocol import Action, FormatCheck, count_searches, parse_turn

PROFILES = ("default", "original")
OutcomeKind = Literal["answer", "search", "refuse", "finish"]


@dataclass(frozen=True)
class TurnState:
    """Where a trajectory stands before an assistant turn: carried-out searches and the 0-based turn index."""

    done: tuple[Action, ...] = ()
    turn_index: int = 0

    def after(self, action: Action, outcome: Outcome) -> TurnState:
        """The state before the next turn (the action is recorded only if it was carried out)."""
        done = self.done + (action,) if outcome.kind in ("search", "answer") else self.done
        return TurnState(done, self.turn_index + 1)


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    reason: str | None = None  # why an action was refused or the trajectory ends early
    finish: str | None = None  # finish reason when the trajectory ends ("answer" for kind "answer")

    @property
    def ends(self) -> bool:
        return self.kind in ("answer", "finish")


def _profile(cfg: ProtocolConfig) -> str:
    if cfg.profile not in PROFILES:
        raise ValueError(f"protocol.profile must be one of {list(PROFILES)}, got {cfg.profile!r}")
    return cfg.profile


def parse(text: str, cfg: ProtocolConfig) -> Action:
    """Parse one assistant turn under the profile's rules."""
    if _profile(cfg) == "original":
        from mmsearch_r1.protocol_original import parse_turn_original

        return parse_turn_original(text)
    return parse_turn(text)


def check_action(
    previous: Sequence[Action], action: Action, turn_index: int, cfg: ProtocolConfig
) -> str | None:
    """Return None if `action` may be carried out now, else the reason it is refused (one sentence).

    `previous`: the actions carried out in earlier assistant turns of this trajectory (invalid actions in it
    are ignored; do not pass searches that were refused). `turn_index`: 0-based index of this assistant turn
    (0 = first turn); it can exceed `len(previous)` when earlier turns were refused.

    Checked in order: invalid action (its own reason); turn beyond `max_turns`; for a search: the last allowed
    turn (an answer is due), image search outside the first turn (when `image_search_first_turn_only`), the
    per-kind limit (`max_image_searches` / `max_text_searches`), the total `max_searches`. Answers are
    always allowed within the turn limit.
    """
    if action.kind == "invalid":
        return action.reason or "the action is not valid"
    if turn_index < 0:
        raise ValueError(f"turn_index must be >= 0, got {turn_index}")
    if turn_index >= cfg.max_turns:
        return f"turn {turn_index + 1} is beyond the limit of {cfg.max_turns} assistant turns"
    if action.kind == "answer":
        return None
    if turn_index == cfg.max_turns - 1:
        return f"this is the last allowed turn ({turn_index + 1} of {cfg.max_turns}): an answer is due, no more searches"
    n_image, n_text = count_searches(previous)
    if action.kind == "image_search":
        if cfg.image_search_first_turn_only and turn_index > 0:
            return "image search is only allowed in the first turn"
        if n_image >= cfg.max_image_searches:
            return f"image search limit reached ({n_image} of {cfg.max_image_searches} used)"
    else:
        if n_text >= cfg.max_text_searches:
            return f"text search limit reached ({n_text} of {cfg.max_text_searches} used)"
    if n_image + n_text >= cfg.max_searches:
        return f"search limit reached ({n_image + n_text} of {cfg.max_searches} used)"
    return None


def next_step(state: TurnState, action: Action, cfg: ProtocolConfig) -> Outcome:
    """What follows the assistant turn `action` (parsed with `parse(text, cfg)`) made in `state`."""
    profile = _profile(cfg)
    i = state.turn_index
    if profile == "original":
        if not action.is_search:
            if action.kind == "answer":
                return Outcome("answer", finish="answer")
            return Outcome("finish", action.reason or "no search and no answer", "no_action")
        limit = check_action(state.done, action, i, cfg)
        if limit is not None:
            return Outcome("finish", limit, "tool_limit")
        return Outcome("search")
    refusal = check_action(state.done, action, i, cfg)
    if refusal is None:
        return Outcome("answer", finish="answer") if action.kind == "answer" else Outcome("search")
    if i + 1 >= cfg.max_turns:
        return Outcome("finish", refusal, "tool_limit" if action.is_search else "max_turns")
    return Outcome("refuse", refusal)


_PROBES = {
    "answer": Action("answer", "x"),
    "image_search": Action("image_search"),
    "text_search": Action("text_search", "x"),
}


def allowed_actions(state: TurnState, cfg: ProtocolConfig) -> list[str]:
    """The action kinds that `next_step` would carry out (answer or search) in `state`."""
    return [k for k, a in _PROBES.items() if next_step(state, a, cfg).kind in ("answer", "search")]


def validate_turns(turns: Sequence[str], cfg: ProtocolConfig) -> FormatCheck:
    """The default profile's format rule for a whole trajectory (the format reward is 1 exactly when `ok`).

    Valid when: there is at least one turn and at most `max_turns`; every turn parses (`parse_turn`); every
    action is allowed when it is made (`check_action`, given the actions before it); every turn but the last is
    a search; the last is an answer. `actions` always holds one parsed action per turn; `reason` names the first
    problem as "turn N: ..." (1-based).
    """
    actions = [parse_turn(t) for t in turns]
    if not actions:
        return FormatCheck(False, actions, "no assistant turns")
    if len(actions) > cfg.max_turns:
        return FormatCheck(
            False, actions, f"{len(actions)} assistant turns, more than max_turns={cfg.max_turns}"
        )
    for i, action in enumerate(actions):
        refusal = check_action(actions[:i], action, i, cfg)
        if refusal is not None:
            return FormatCheck(False, actions, f"turn {i + 1}: {refusal}")
        last = i == len(actions) - 1
        if not last and action.kind == "answer":
            return FormatCheck(False, actions, f"turn {i + 1}: answered, but the trajectory went on")
        if last and action.kind != "answer":
            return FormatCheck(False, actions, f"turn {i + 1}: the last turn is a search, not an answer")
    return FormatCheck(True, actions, None)


def format_check(turns: Sequence[str], cfg: ProtocolConfig) -> FormatCheck:
    """The profile's whole-trajectory format rule (`validate_turns` or the original's four shapes)."""
    if _profile(cfg) == "original":
        from mmsearch_r1.protocol_original import format_check_original

        return format_check_original(turns)
    return validate_turns(turns, cfg)
