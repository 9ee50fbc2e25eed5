"""SFT conversations: reading and writing them, building them with the rollout's prompts, and rendering them to
token ids with the RL loss mask.

File format (docs/sft.md): JSONL, one conversation per line, or parquet with a `messages` column (a JSON string
or a list of structs) and an optional `id` column:

    {"id": "q1", "messages": [
        {"role": "user", "content": [{"type": "image", "path": "img/q1.png"}, {"type": "text", "text": "..."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "<reason>...</reason><answer>x</answer>"}]}]}

`role` is system | user | assistant; `content` is a string or a list of parts; an image part has `path`
(relative to the data file's folder), `bytes_b64` (base64 of the encoded image) or, in parquet, `bytes`.
Assistant messages are text only. Other keys of a line are kept in `Conversation.meta`.

Loss mask (the same as RL's `Trajectory.loss_mask`): 1 on each assistant message's own tokens and its closing
`<|im_end|>`; 0 on the `<|im_start|>assistant\\n` header (the generation prompt), on every system/user/tool
token and on image tokens. The rendered sequence is `ChatRenderer.render(messages)` cut right after the last
assistant `<|im_end|>`, so it is token-for-token what the agent loop builds for the same turns (tested).

`build_conversation(sample, turns, ...)` writes a conversation exactly as the agent loop would prompt it: the
prompt set's first turn, then after each assistant turn the observation of its search (from the given
`ToolResult`) or the refusal the loop would give. It does not drop thumbnails over `rollout.max_images` or
budget tool turns by tokens as the loop does.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsearch_r1 import turns as turns_rules
from mmsearch_r1.config import ProtocolConfig
from mmsearch_r1.data.errors import DataError
from mmsearch_r1.rollout.prompts import get_prompt_set
from mmsearch_r1.rollout.trajectory import Trajectory
from mmsearch_r1.types import ImageData, Message, Part, Sample, ToolResult

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


@dataclass
class Conversation:
    id: str
    messages: list[Message]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenizedConversation:
    """A rendered conversation: ids, the RL loss mask, and the images whose pad runs it contains, in order."""

    id: str
    input_ids: list[int]
    loss_mask: list[int]
    images: list[Part]
    image_grid_thw: list[tuple[int, int, int]]
    truncated: bool = False

    def as_trajectory(self) -> Trajectory:
        """The same tokens as a rollout `Trajectory`: the prompt up to the first trained token, then the rest."""
        first = self.loss_mask.index(1)
        return Trajectory(
            sample_id=self.id,
            group_index=0,
            prompt_ids=self.input_ids[:first],
            response_ids=self.input_ids[first:],
            loss_mask=self.loss_mask[first:],
            sampled_logprobs=[0.0] * (len(self.input_ids) - first),
            images=list(self.images),
            image_grid_thw=list(self.image_grid_thw),
            finish_reason="answer",
        )


# ----------------------------------------------------------------------------------------------------------
# Reading and writing
# ----------------------------------------------------------------------------------------------------------
def _part(raw: Any, base: Path, file: str, row: int, where: str) -> Part:
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, dict):
        raise DataError(file, row, where, f"a part must be an object, got {type(raw).__name__}")
    kind = raw.get("type", "image" if "image" in raw or "path" in raw or "bytes_b64" in raw else None)
    if kind == "text":
        text = raw.get("text")
        if not isinstance(text, str):
            raise DataError(file, row, f"{where}.text", "a text part needs a string 'text'")
        return text
    if kind != "image":
        raise DataError(file, row, f"{where}.type", f"expected 'text' or 'image', got {kind!r}")
    if raw.get("bytes_b64"):
        try:
            return ImageData(bytes=base64.b64decode(raw["bytes_b64"], validate=True))
        except (binascii.Error, TypeError) as e:
            raise DataError(file, row, f"{where}.bytes_b64", f"not valid base64: {e}") from None
    if raw.get("bytes"):
        return ImageData(bytes=bytes(raw["bytes"]))
    if raw.get("path"):
        p = Path(raw["path"])
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise DataError(file, row, f"{where}.path", f"image file not found: {p}")
        return ImageData(path=str(p))
    raise DataError(file, row, where, "an image part needs 'path' or 'bytes_b64'")


def parse_conversation(obj: Any, *, file: str, row: int, base: Path | None = None) -> Conversation:
    """One record (dict with `messages`) -> `Conversation`; raises DataError naming the row and field."""
    if not isinstance(obj, dict):
        raise DataError(file, row, None, f"expected a JSON object, got {type(obj).__name__}")
    raw_msgs = obj.get("messages")
    if isinstance(raw_msgs, str):
        try:
            raw_msgs = json.loads(raw_msgs)
        except json.JSONDecodeError as e:
            raise DataError(file, row, "messages", f"not valid JSON: {e.msg}") from None
    if not isinstance(raw_msgs, list) or not raw_msgs:
        raise DataError(file, row, "messages", "must be a non-empty list of messages")
    base = base or Path(".")
    messages: list[Message] = []
    for i, m in enumerate(raw_msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise DataError(file, row, where, "a message must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise DataError(file, row, f"{where}.role", f"must be one of {list(ROLES)}, got {role!r}")
        content = m.get("content")
        if isinstance(content, str):
            content = [content]
        if not isinstance(content, list):
            raise DataError(file, row, f"{where}.content", "must be a string or a list of parts")
        parts = [_part(p, base, file, row, f"{where}.content[{j}]") for j, p in enumerate(content)]
        if role == "assistant" and any(not isinstance(p, str) for p in parts):
            raise DataError(file, row, f"{where}.content", "assistant messages must be text only")
        messages.append(Message(role, parts))
    if not any(m.role == "assistant" for m in messages):
        raise DataError(file, row, "messages", "has no assistant message (nothing to train on)")
    cid = obj.get("id")
    meta = {k: v for k, v in obj.items() if k not in ("id", "messages")}
    return Conversation(str(cid) if cid is not None else f"{Path(file).name}:{row}", messages, meta)


def read_conversations(paths: str | Path | Sequence[str | Path]) -> list[Conversation]:
    """Conversations from JSONL (`.jsonl`/`.json`) and parquet files, in file order. Rows are 0-based."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Conversation] = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"SFT data file not found: {p}")
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(p)
            if "messages" not in table.column_names:
                raise DataError(
                    str(p), None, "messages", f"no 'messages' column (columns: {table.column_names})"
                )
            for row, rec in enumerate(table.to_pylist()):
                out.append(parse_conversation(rec, file=str(p), row=row, base=p.parent))
            continue
        with p.open(encoding="utf-8") as fh:
            for row, line in enumerate(fh):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(str(p), row, None, f"not valid JSON: {e.msg}") from None
                out.append(parse_conversation(obj, file=str(p), row=row, base=p.parent))
    return out


def _part_json(part: Part) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if isinstance(part, ImageData) and part.bytes is not None:
        data = part.bytes
    else:
        buf = io.BytesIO()
        (part.load() if isinstance(part, ImageData) else part).save(buf, format="PNG")
        data = buf.getvalue()
    return {"type": "image", "bytes_b64": base64.b64encode(data).decode("ascii")}


def conversation_to_json(conv: Conversation) -> dict[str, Any]:
    """A JSON-ready record (images inlined as base64) that `parse_conversation` reads back."""
    msgs = [{"role": m.role, "content": [_part_json(p) for p in m.content]} for m in conv.messages]
    return {"id": conv.id, "messages": msgs, **conv.meta}


def write_conversations(path: str | Path, conversations: Iterable[Conversation]) -> Path:
    """Write conversations as JSONL (images inlined); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as fh:
        for conv in conversations:
            fh.write(json.dumps(conversation_to_json(conv), ensure_ascii=False) + "\n")
    return p


# ----------------------------------------------------------------------------------------------------------
# Building conversations with the rollout's prompts
# ----------------------------------------------------------------------------------------------------------
def build_conversation(
    sample: Sample,
    turns: Sequence[tuple[str, ToolResult | None]],
    *,
    protocol: ProtocolConfig,
    prompt_set: str = "default",
    conversation_id: str | None = None,
    template_system: str | None = None,
) -> Conversation:
    """The conversation the agent loop would build if the policy wrote `turns`.

    The first messages follow the prompt set's layout (`PromptSet.first_messages`); a layout that asks for the
    chat template's default system prompt needs it as `template_system` (`ChatRenderer.template_system_prompt()`).

    Each turn is (assistant text, the result of its search or None). A search the protocol allows needs its
    `ToolResult`; a refused action gets the loop's refusal turn. The conversation must end where
    `turns.next_step` ends it (an answer, or a finish such as the last allowed turn); ValueError names the turn
    otherwise.
    """
    prompts = get_prompt_set(prompt_set)
    messages = prompts.first_messages(sample, protocol, template_system)
    state = turns_rules.TurnState()
    for i, (text, result) in enumerate(turns):
        if i >= protocol.max_turns:
            raise ValueError(f"turn {i + 1}: more than protocol.max_turns={protocol.max_turns} turns")
        messages.append(Message("assistant", [text]))
        action = turns_rules.parse(text, protocol)
        outcome = turns_rules.next_step(state, action, protocol)
        state = state.after(action, outcome)
        last = i == len(turns) - 1
        if outcome.ends:
            if not last:
                what = "answers" if outcome.kind == "answer" else f"ends the conversation ({outcome.finish})"
                raise ValueError(f"turn {i + 1} {what} but more turns follow")
            break
        if last:
            raise ValueError(f"turn {i + 1} is the last given but does not end the conversation")
        allowed = turns_rules.allowed_actions(state, protocol)
        turns_left = protocol.max_turns - state.turn_index
        if outcome.kind == "search":
            if result is None:
                raise ValueError(f"turn {i + 1} makes an allowed {action.kind}; give its ToolResult")
            parts = prompts.observation(
                action.kind,
                result.parts,
                ok=result.ok,
                query=action.content if action.kind == "text_search" else None,
                question=sample.question,
                allowed=allowed,
                turns_left=turns_left,
            )
        else:
            parts = prompts.refusal(
                outcome.reason or "the action is not valid",
                question=sample.question,
                allowed=allowed,
                turns_left=turns_left,
            )
        messages.append(Message("user", parts))
    return Conversation(conversation_id or sample.id, messages)


# ----------------------------------------------------------------------------------------------------------
# Rendering with the loss mask
# ----------------------------------------------------------------------------------------------------------
def _grids(rendered: Any) -> list[tuple[int, int, int]]:
    grid = rendered.image_grid_thw
    if grid is None:
        return []
    rows = grid.tolist() if hasattr(grid, "tolist") else grid
    return [(int(t), int(h), int(w)) for t, h, w in rows]


def assistant_mask(input_ids: Sequence[int], renderer: Any) -> list[int]:
    """1 from after each `<|im_start|>assistant\\n` header through its `<|im_end|>`; 0 elsewhere."""
    sp = renderer.special
    header = [sp.im_start, *renderer.encode("assistant\n")]
    mask = [0] * len(input_ids)
    i, n, h = 0, len(input_ids), len(header)
    while i < n:
        if list(input_ids[i : i + h]) == header:
            j = i + h
            while j < n and input_ids[j] != sp.im_end:
                mask[j] = 1
                j += 1
            if j < n:
                mask[j] = 1
            i = j + 1
        else:
            i += 1
    return mask


def tokenize_conversation(conv: Conversation, renderer: Any, max_length: int) -> TokenizedConversation | None:
    """Render with the loss mask; cut after the last assistant turn, or the last whole one within `max_length`.

    Returns None when not even the first assistant turn fits. Image errors raise DataError naming the id.
    """
    try:
        rendered = renderer.render(conv.messages, add_generation_prompt=False)
    except ValueError as e:
        raise DataError(conv.id, None, "messages", f"cannot render: {e}") from e
    ids = list(rendered.input_ids)
    mask = assistant_mask(ids, renderer)
    n_turns = sum(1 for a, b in zip([0, *mask], mask, strict=False) if b and not a)
    expected = sum(1 for m in conv.messages if m.role == "assistant")
    if (
        n_turns != expected
    ):  # an empty assistant message still has its <|im_end|>, so this only fails on a bug
        raise RuntimeError(f"conversation {conv.id}: found {n_turns} assistant spans, expected {expected}")
    ends = [k + 1 for k, (a, b) in enumerate(zip(mask, [*mask[1:], 0], strict=True)) if a and not b]
    fitting = [e for e in ends if e <= max_length]
    if not fitting:
        return None
    cut = fitting[-1]
    vs = renderer.special.vision_start
    n_images = sum(1 for t in ids[:cut] if t == vs)
    return TokenizedConversation(
        id=conv.id,
        input_ids=ids[:cut],
        loss_mask=mask[:cut],
        images=list(rendered.images[:n_images]),
        image_grid_thw=_grids(rendered)[:n_images],
        truncated=cut < ends[-1],
    )
