"""`Trajectory`: one multi-turn rollout recorded exactly in token space, its JSON export, and its invariants.

Layout: `prompt_ids` is the rendered first user turn up to and including the assistant header; `response_ids` is
everything after it: assistant turn 1 (ending with `<|im_end|>`), the tool turn rendered by
`ChatRenderer.render_tool_turn` (ending with the next assistant header), assistant turn 2, ... The response never
ends inside a tool turn: it ends with the last assistant turn's `<|im_end|>`.

- `loss_mask[i] == 1` exactly when the policy sampled `response_ids[i]`; tool turns, image tokens and tokens the
  loop or an engine forced (the `<|im_end|>` that closes a turn cut at its token limit, scripted tags) are 0.
- `sampled_logprobs[i]` is the engine's log-probability of `response_ids[i]` (`log_softmax(logits / T)`, see
  `engine.py`) where the mask is 1, and exactly 0.0 where it is 0.
- `images` are PIL images in the order their pad runs appear in `prompt_ids + response_ids`: the question's
  images, then every thumbnail a tool turn showed. `image_grid_thw[k]` is the (t, h, w) patch grid of image k;
  image k has exactly `t * h * w / merge**2` pad tokens, between `<|vision_start|>` and `<|vision_end|>`.
- `turns` holds one `TurnRecord` per assistant turn: its span in `response_ids`, decoded text (for people and
  the reward; never re-encoded), parsed `Action`, why it was refused (if it was), and the tool call it made.
- `finish_reason`: "answer" (an allowed answer), "max_turns" (the last allowed turn was malformed), "tool_limit"
  (the last allowed turn asked for a search it may not make), "max_tokens" (the response budget ran out, cut at a
  turn boundary), "no_action" (profile "original": a turn with neither a search nor an answer), "error" (the sample could not be rendered or its prompt is too long; see `error`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import IO, Any

from mmsearch_r1.protocol import Action

FINISH_REASONS = ("answer", "max_turns", "max_tokens", "tool_limit", "no_action", "error")


@dataclass
class ToolCallRecord:
    """One tool call as the trajectory saw it (a summary of the `ToolResult`, images by title/size)."""

    name: str
    arg: str | None
    ok: bool
    error: str | None = None
    latency_s: float = 0.0
    text: str = ""
    n_images: int = 0
    n_images_shown: int = 0
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class TurnRecord:
    """One assistant turn and what followed it.

    `start:end` is the assistant turn's span in `response_ids` (its own tokens, the closing `<|im_end|>`
    included); `obs_start:obs_end` the tool turn that followed (empty if none). `finish` is the engine's finish
    reason for the turn ("length" means the loop closed it with a forced `<|im_end|>`).
    """

    index: int
    start: int
    end: int
    text: str
    action: Action
    finish: str
    n_sampled: int
    refusal: str | None = None
    tool: ToolCallRecord | None = None
    obs_start: int = 0
    obs_end: int = 0
    observation: str = ""


@dataclass
class Trajectory:
    sample_id: str
    group_index: int
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    sampled_logprobs: list[float] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    image_grid_thw: list[tuple[int, int, int]] = field(default_factory=list)
    image_sources: list[str] = field(default_factory=list)
    turns: list[TurnRecord] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    question: str = ""
    stats: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------------ views
    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids

    @property
    def assistant_texts(self) -> list[str]:
        """The decoded assistant turns, in order (what the reward and the format check read)."""
        return [t.text for t in self.turns]

    @property
    def actions(self) -> list[Action]:
        return [t.action for t in self.turns]

    @property
    def n_image_searches(self) -> int:
        return sum(1 for t in self.turns if t.tool is not None and t.tool.name == "image_search")

    @property
    def n_text_searches(self) -> int:
        return sum(1 for t in self.turns if t.tool is not None and t.tool.name == "text_search")

    @property
    def n_sampled_tokens(self) -> int:
        return sum(self.loss_mask)

    # ------------------------------------------------------------------ export
    def to_json(self, decode: Any = None) -> dict[str, Any]:
        """A JSON-ready dict for people: decoded turns, actions, tool calls; images as sizes, never pixels.

        `decode(ids) -> str` (e.g. `renderer.decode`), if given, adds the decoded prompt.
        """
        out: dict[str, Any] = {
            "sample_id": self.sample_id,
            "group_index": self.group_index,
            "question": self.question,
            "finish_reason": self.finish_reason,
            "error": self.error,
            "n_prompt_tokens": len(self.prompt_ids),
            "n_response_tokens": len(self.response_ids),
            "n_sampled_tokens": self.n_sampled_tokens,
            "images": [
                {"index": k, "source": src, "size": list(getattr(img, "size", ())), "grid_thw": list(grid)}
                for k, (img, src, grid) in enumerate(
                    zip(self.images, self.image_sources, self.image_grid_thw, strict=False)
                )
            ],
            "turns": [_turn_json(t) for t in self.turns],
            "stats": dict(self.stats),
        }
        if decode is not None:
            out["prompt"] = decode(self.prompt_ids)
        return out


def _turn_json(t: TurnRecord) -> dict[str, Any]:
    d: dict[str, Any] = {
        "index": t.index,
        "text": t.text,
        "action": {"kind": t.action.kind, "content": t.action.content, "reason": t.action.reason},
        "refusal": t.refusal,
        "finish": t.finish,
        "span": [t.start, t.end],
        "n_sampled": t.n_sampled,
        "observation": t.observation,
    }
    if t.tool is not None:
        tool = t.tool
        d["tool"] = {
            "name": tool.name,
            "arg": tool.arg,
            "ok": tool.ok,
            "error": tool.error,
            "latency_s": round(tool.latency_s, 4),
            "text": tool.text,
            "n_images": tool.n_images,
            "n_images_shown": tool.n_images_shown,
            "stats": tool.stats,
        }
    return d


def write_jsonl(trajectories: list[Trajectory], fh: IO[str], decode: Any = None) -> int:
    """Write one JSON line per trajectory (see `Trajectory.to_json`); returns the number written."""
    for traj in trajectories:
        fh.write(json.dumps(traj.to_json(decode), ensure_ascii=False) + "\n")
    return len(trajectories)


# ---------------------------------------------------------------------------------------- invariants
@dataclass
class TokenIds:
    """The special token ids the invariants need (looked up by text from the renderer)."""

    im_end: int
    image_pad: int
    vision_start: int
    vision_end: int
    merge_size: int


def check_invariants(traj: Trajectory, ids: TokenIds) -> list[str]:
    """Every violated invariant of `traj`, as readable strings (empty list = all hold). See the module docstring.

    `ids` comes from `rollout.loop.token_ids(renderer)`.
    """
    errs: list[str] = []
    n = len(traj.response_ids)
    if traj.finish_reason not in FINISH_REASONS:
        errs.append(f"finish_reason {traj.finish_reason!r} is not one of {FINISH_REASONS}")
    if len(traj.loss_mask) != n or len(traj.sampled_logprobs) != n:
        errs.append(
            f"lengths differ: {n} ids, {len(traj.loss_mask)} mask, {len(traj.sampled_logprobs)} logprobs"
        )
        return errs
    for i, (m, lp) in enumerate(zip(traj.loss_mask, traj.sampled_logprobs, strict=True)):
        if m not in (0, 1):
            errs.append(f"loss_mask[{i}] = {m} is not 0/1")
        elif m == 0 and lp != 0.0:
            errs.append(f"sampled_logprobs[{i}] = {lp} on a mask-0 token")
        elif m == 1 and not (lp <= 0.0 and lp > float("-inf")):
            errs.append(f"sampled_logprobs[{i}] = {lp} is not a finite log-probability")
    special = {ids.image_pad, ids.vision_start, ids.vision_end}
    for i, (tok, m) in enumerate(zip(traj.response_ids, traj.loss_mask, strict=True)):
        if m == 1 and tok in special:
            errs.append(f"response token {i} is an image token with loss mask 1")
    # turn spans: assistant tokens tile the mask-1 positions; observations are all mask 0
    covered = [False] * n
    prev_end = 0
    for t in traj.turns:
        if not (prev_end <= t.start < t.end <= n):
            errs.append(f"turn {t.index}: span {t.start}:{t.end} out of order or out of range")
            continue
        if traj.response_ids[t.end - 1] != ids.im_end:
            errs.append(f"turn {t.index}: does not end with <|im_end|>")
        if sum(traj.loss_mask[t.start : t.end]) != t.n_sampled:
            errs.append(f"turn {t.index}: {t.n_sampled} sampled tokens recorded, mask says otherwise")
        for i in range(t.start, t.end):
            covered[i] = True
        if t.obs_end > t.obs_start:
            if t.obs_start != t.end or any(traj.loss_mask[t.obs_start : t.obs_end]):
                errs.append(f"turn {t.index}: observation {t.obs_start}:{t.obs_end} misplaced or has mask 1")
            prev_end = t.obs_end
        else:
            prev_end = t.end
    if traj.turns and prev_end != n:
        errs.append(f"response has {n} tokens but the turns end at {prev_end}")
    if any(m == 1 and not c for m, c in zip(traj.loss_mask, covered, strict=True)):
        errs.append("a mask-1 token lies outside every assistant turn")
    errs += _check_images(traj, ids)
    return errs


def _check_images(traj: Trajectory, ids: TokenIds) -> list[str]:
    errs: list[str] = []
    seq = traj.input_ids
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(seq):
        if seq[i] == ids.image_pad:
            j = i
            while j < len(seq) and seq[j] == ids.image_pad:
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    if not (len(runs) == len(traj.images) == len(traj.image_grid_thw)):
        errs.append(
            f"{len(runs)} image pad runs, {len(traj.images)} images, {len(traj.image_grid_thw)} grids"
        )
    for k, ((a, b), grid) in enumerate(zip(runs, traj.image_grid_thw, strict=False)):
        t, h, w = grid
        want = t * h * w // ids.merge_size**2
        if b - a != want:
            errs.append(f"image {k}: {b - a} pad tokens, grid {tuple(grid)} needs {want}")
        if a == 0 or seq[a - 1] != ids.vision_start or b >= len(seq) or seq[b] != ids.vision_end:
            errs.append(f"image {k}: pad run {a}:{b} is not enclosed by <|vision_start|>/<|vision_end|>")
    if len(traj.image_sources) != len(traj.images):
        errs.append(f"{len(traj.image_sources)} image sources for {len(traj.images)} images")
    return errs
