"""The rollout's prompts: the first user turn and the tool turns, rendered from jinja files in the package.

A prompt set `NAME` is the files `prompts/rollout_NAME_{first_turn,after_image_search,after_text_search,
refusal,next}.j2` (select with `RolloutConfig.prompt_set`); a prompt set may also be a directory path holding
`first_turn.j2`, `after_image_search.j2`, `after_text_search.j2`, `refusal.j2` (and `next.j2` if they include
it). The SFT and world builders render conversations with these same functions so training data and rollouts
match.

- First user turn: the question's images, then the instruction (the three actions, `<reason>`, the limits of
  `ProtocolConfig`) and the question.
- Tool turn after a search: `<information>` + the tool's result parts (thumbnails and titles, or page summaries,
  in order; images stay image parts) + `</information>`, then what the results are, the original question
  (always `Sample.question`, never recovered from decoded text) and what may come next, computed from the
  protocol limits (`allowed_next_actions`).
- Refusal turn (a malformed or over-limit action): the reason it was not carried out, the question, what may
  come next.

The result parts are spliced in where the template writes `{{ results }}`; the template's own text never
carries images, and a tool's text cannot create an image slot (images are parts, not placeholder strings).
Likewise the question's images go where the first-turn template writes `{{ images }}` (before its text when it
does not). A directory set's `layout.yaml` (`prompt_layout.Layout`) chooses the system message and the tool
turn's leading newline; `first_messages` gives the messages of the first turn, system message included.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from mmsearch_r1 import turns
from mmsearch_r1.config import ProtocolConfig
from mmsearch_r1.prompt_layout import read_layout
from mmsearch_r1.protocol import Action
from mmsearch_r1.types import Message, Part, Sample

_PARTS = ("first_turn", "after_image_search", "after_text_search", "refusal")
_RESULTS_MARKER = "\x00RESULTS\x00"
_IMAGES_MARKER = "\x00IMAGES\x00"


def allowed_next_actions(previous: Sequence[Action], turn_index: int, cfg: ProtocolConfig) -> list[str]:
    """The action kinds `turns.next_step` would carry out at `turn_index` after the carried-out `previous`."""
    return turns.allowed_actions(turns.TurnState(tuple(previous), turn_index), cfg)


class PromptSet:
    """The templates of one prompt set. Raises FileNotFoundError naming the set if a file is missing."""

    def __init__(self, name: str = "default") -> None:
        import jinja2

        self.name = name
        directory = Path(name) if ("/" in name or name.startswith(".")) else None
        if directory is not None and not directory.is_dir():
            raise FileNotFoundError(
                f"prompt set directory {name!r} does not exist (for the original's prompts, write it with "
                "`mmsearch-r1 prompts import-original DIR OUT`)"
            )

        def load(template: str) -> str:
            if directory is not None:
                path = directory / template
                if not path.is_file():
                    raise FileNotFoundError(f"prompt set {name!r}: missing {template}")
                return path.read_text(encoding="utf-8")
            res = resources.files("mmsearch_r1").joinpath("prompts", template)
            if not res.is_file():
                raise FileNotFoundError(f"prompt set {name!r}: missing prompts/{template}")
            return res.read_text(encoding="utf-8")

        self._env = jinja2.Environment(
            loader=jinja2.FunctionLoader(load),
            autoescape=False,
            keep_trailing_newline=False,
            undefined=jinja2.StrictUndefined,
        )
        self.layout = read_layout(directory)
        prefix = "" if directory is not None else f"rollout_{name}_"
        self._templates = {part: self._env.get_template(f"{prefix}{part}.j2") for part in _PARTS}

    def _render(self, part: str, **variables: Any) -> str:
        text = self._templates[part].render(**variables)
        return text.strip() if self.layout.strip else text

    # ------------------------------------------------------------------ turns
    def first_turn(self, sample: Sample, cfg: ProtocolConfig) -> Message:
        """The first user message: the instruction and the question, with the sample's images where the
        template writes `{{ images }}` (before the text when it does not)."""
        text = self._render(
            "first_turn",
            images=_IMAGES_MARKER,
            question=sample.question,
            max_turns=cfg.max_turns,
            max_searches=cfg.max_searches,
            max_image_searches=cfg.max_image_searches,
            max_text_searches=cfg.max_text_searches,
            image_search_first_turn_only=cfg.image_search_first_turn_only,
        )
        n = text.count(_IMAGES_MARKER)
        if n == 0:
            return Message("user", _merge_text([*sample.images, text]))
        if n > 1:
            raise ValueError(
                f"prompt set {self.name!r}: first_turn.j2 writes {{{{ images }}}} more than once"
            )
        head, tail = text.split(_IMAGES_MARKER)
        return Message("user", _merge_text([head, *sample.images, tail]))

    def first_messages(
        self, sample: Sample, cfg: ProtocolConfig, template_system: str | None = None
    ) -> list[Message]:
        """The messages before the first assistant turn: the layout's system message (if any), the first turn.
        `template_system` is the chat template's default system prompt (for `system: template_default`)."""
        system = self.layout.system_text(template_system)
        first = self.first_turn(sample, cfg)
        return [first] if system is None else [Message("system", [system]), first]

    def observation(
        self,
        tool_name: str,
        result_parts: Sequence[Part],
        *,
        ok: bool,
        question: str,
        allowed: Sequence[str],
        turns_left: int,
        query: str | None = None,
    ) -> list[Part]:
        """The tool turn's content after a search (`tool_name` "image_search" or "text_search")."""
        if tool_name not in ("image_search", "text_search"):
            raise ValueError(f"no observation template for tool {tool_name!r}")
        text = self._render(
            f"after_{tool_name}",
            results=_RESULTS_MARKER,
            ok=ok,
            query=query or "",
            question=question,
            allowed=list(allowed),
            turns_left=turns_left,
        )
        if text.count(_RESULTS_MARKER) != 1:
            raise ValueError(
                f"prompt set {self.name!r}: after_{tool_name}.j2 must write {{{{ results }}}} once"
            )
        head, tail = text.split(_RESULTS_MARKER)
        return _merge_text([head, *result_parts, tail])

    def refusal(self, reason: str, *, question: str, allowed: Sequence[str], turns_left: int) -> list[Part]:
        """The user turn after an action that was not carried out."""
        reason = reason.rstrip(". ")
        return [
            self._render(
                "refusal", reason=reason, question=question, allowed=list(allowed), turns_left=turns_left
            )
        ]


@functools.lru_cache(maxsize=16)
def get_prompt_set(name: str = "default") -> PromptSet:
    """A cached `PromptSet` by name (or directory path)."""
    return PromptSet(name)


def _merge_text(parts: Sequence[Part]) -> list[Part]:
    """Join adjacent text parts and drop empty ones (images stay where they are)."""
    out: list[Part] = []
    for p in parts:
        if isinstance(p, str):
            if not p:
                continue
            if out and isinstance(out[-1], str):
                out[-1] = out[-1] + p
                continue
        out.append(p)
    return out
