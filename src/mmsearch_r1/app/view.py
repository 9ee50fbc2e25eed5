"""Trajectory rendering for people: one `TrajView` record, drawn as HTML (both app tabs) or text (`infer`).

A `TrajView` is built from a live `rollout.Trajectory` (`view_from_trajectory`, thumbnails included), from a
saved record (`view_from_record`: `samples.jsonl` / traces hold no pixels, so thumbnails are listed by title
only), or turn by turn while a rollout runs (`live_turn`, `live_tool`). `trajectory_html(view)` and
`trajectory_text(view)` draw it: the question, each assistant turn's reasoning and action, each tool call (image
search: the thumbnails with their titles; text search: the titles, links and summaries), refusals, the final
answer and, with gold answers, the reward broken into accuracy, format and search penalty.

Pure functions of their inputs (no Gradio, no model): every string from a model, a page or a file is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from typing import Any

from mmsearch_r1.protocol import parse_turn

THUMB_SIDE = 96  # thumbnails are drawn with this longer side (CSS); pixels are sent at most at 2x
_RESULT = re.compile(r"^\s*(\d+)\.\s*(.*)$")


@dataclass
class ToolView:
    name: str
    arg: str | None
    ok: bool
    error: str | None
    text: str  # the tool's observation text, `<image>` where a thumbnail was
    thumbnails: list[Any] = field(default_factory=list)  # per `<image>`: a PIL image, or None (not stored)


@dataclass
class TurnView:
    index: int
    text: str
    kind: str  # answer | image_search | text_search | invalid
    content: str = ""
    reason: str | None = None
    refusal: str | None = None
    tool: ToolView | None = None


@dataclass
class TrajView:
    question: str
    turns: list[TurnView] = field(default_factory=list)
    question_image: Any = None
    gold: list[str] = field(default_factory=list)
    final_answer: str | None = None
    correct: bool | None = None
    reward: dict[str, float] = field(default_factory=dict)
    finish_reason: str | None = None  # None while the rollout runs
    error: str | None = None
    caption: str = ""  # e.g. "world_tail t-0003, step 12"


# ------------------------------------------------------------------------------------------------ builders
def _turn_from_json(t: dict[str, Any], thumbs: list[Any] | None = None) -> TurnView:
    action = t.get("action") or {}
    tool = None
    if t.get("tool"):
        d = t["tool"]
        text = str(d.get("text", ""))
        n = text.count("<image>")
        shown = list(thumbs or [])[:n]
        tool = ToolView(
            name=str(d.get("name", "")),
            arg=d.get("arg"),
            ok=bool(d.get("ok", True)),
            error=d.get("error"),
            text=text,
            thumbnails=shown + [None] * (n - len(shown)),
        )
    return TurnView(
        index=int(t.get("index", 0)),
        text=str(t.get("text", "")),
        kind=str(action.get("kind", "invalid")),
        content=str(action.get("content") or ""),
        reason=action.get("reason"),
        refusal=t.get("refusal"),
        tool=tool,
    )


def view_from_record(rec: Any) -> TrajView:
    """A view of an `eval.records.TrajectoryRecord` (no pixels: thumbnails are titles only)."""
    where = f"step {rec.step}" if rec.step is not None else "evaluation"
    caption = " ".join(x for x in (rec.data_source, rec.id, f"({where})") if x)
    return TrajView(
        question=rec.question,
        turns=[_turn_from_json(t) for t in rec.turns],
        gold=list(rec.gold),
        final_answer=rec.final_answer,
        correct=rec.correct,
        reward=dict(rec.reward),
        finish_reason=rec.finish_reason,
        error=rec.error,
        caption=caption,
    )


def view_from_trajectory(
    traj: Any, *, gold: list[str] | None = None, reward: dict[str, float] | None = None, correct: Any = None
) -> TrajView:
    """A view of a finished `rollout.Trajectory`, with the thumbnails it showed the model."""
    from mmsearch_r1.protocol import extract_final_answer

    exported = traj.to_json()
    turns = []
    for t in exported["turns"]:
        thumbs = []
        if t.get("tool"):
            src = f"turn {t['index'] + 1} {t['tool']['name']}"
            thumbs = [im for im, s in zip(traj.images, traj.image_sources, strict=False) if s == src]
        turns.append(_turn_from_json(t, thumbs))
    qimg = next((im for im, s in zip(traj.images, traj.image_sources, strict=False) if s == "question"), None)
    return TrajView(
        question=traj.question,
        turns=turns,
        question_image=qimg,
        gold=list(gold or []),
        final_answer=extract_final_answer(traj.assistant_texts),
        correct=correct,
        reward=dict(reward or {}),
        finish_reason=traj.finish_reason,
        error=traj.error,
    )


def live_turn(view: TrajView, text: str) -> TurnView:
    """Append an assistant turn (as generated) to a view under construction; returns it."""
    action = parse_turn(text)
    turn = TurnView(len(view.turns), text, action.kind, action.content, action.reason)
    view.turns.append(turn)
    return turn


def live_tool(view: TrajView, name: str, arg: str | None, result: Any) -> None:
    """Attach a tool's `ToolResult` to the last turn of a view under construction."""
    if not view.turns:
        raise ValueError("a tool result arrived before any assistant turn")
    view.turns[-1].tool = ToolView(
        name, arg, result.ok, result.error, result.text, [p for p in result.parts if not isinstance(p, str)]
    )


# ------------------------------------------------------------------------------------------------ tool text
def image_results(tool: ToolView) -> list[tuple[Any, str]]:
    """(thumbnail or None, title) per numbered result of an image search observation."""
    out: list[tuple[Any, str]] = []
    thumbs = iter(tool.thumbnails)
    for chunk in tool.text.split("\n"):
        has_img = chunk.startswith("<image>")
        body = chunk.replace("<image>", "").strip()
        if not body and not has_img:
            continue
        m = _RESULT.match(body)
        out.append((next(thumbs, None) if has_img else None, m.group(2) if m else body))
    return out


def text_results(tool: ToolView) -> list[dict[str, str]]:
    """{title, url, summary} per numbered result of a text search observation (`tools.text_search` format)."""
    out: list[dict[str, str]] = []
    cur: dict[str, str] | None = None
    for line in tool.text.splitlines():
        m = _RESULT.match(line)
        if m and not line.startswith((" ", "URL:", "Summary:")):
            cur = {"title": m.group(2).strip(), "url": "", "summary": ""}
            out.append(cur)
        elif cur is not None and line.startswith("URL:"):
            cur["url"] = line[4:].strip()
        elif cur is not None and line.startswith("Summary:"):
            cur["summary"] = line[8:].strip()
        elif cur is not None and line.strip():
            cur["summary"] = (cur["summary"] + " " + line.strip()).strip()
    return out


# ------------------------------------------------------------------------------------------------ HTML
def image_data_uri(img: Any, max_side: int = 2 * THUMB_SIDE) -> str:
    """A PNG data URI of a PIL image, downscaled to `max_side`."""
    im = img.convert("RGB")
    if max(im.size) > max_side:
        im = im.copy()
        im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _safe_url(url: str) -> str | None:
    return url if url.startswith(("http://", "https://")) else None


def _tool_html(tool: ToolView) -> str:
    head = "image search" if tool.name == "image_search" else f"text search: <q>{_e(tool.arg or '')}</q>"
    status = "" if tool.ok else f' <span class="mm-err">failed: {_e(tool.error or "")}</span>'
    parts = [f'<div class="mm-tool mm-{_e(tool.name)}"><div class="mm-tool-head">{head}{status}</div>']
    if tool.name == "image_search":
        items = image_results(tool)
        if items:
            parts.append('<div class="mm-thumbs">')
            for img, title in items:
                pic = (
                    f'<img class="mm-thumb" src="{image_data_uri(img)}" alt="{_e(title)}">'
                    if img is not None
                    else '<span class="mm-nothumb">thumbnail not stored</span>'
                )
                parts.append(f'<figure class="mm-result">{pic}<figcaption>{_e(title)}</figcaption></figure>')
            parts.append("</div>")
        else:
            parts.append(f"<pre>{_e(tool.text)}</pre>")
    else:
        items_t = text_results(tool)
        if items_t:
            parts.append('<ol class="mm-pages">')
            for r in items_t:
                url = _safe_url(r["url"])
                link = (
                    f' <a href="{_e(url)}" target="_blank" rel="noopener noreferrer">{_e(url)}</a>'
                    if url
                    else (f" <code>{_e(r['url'])}</code>" if r["url"] else "")
                )
                parts.append(f"<li><b>{_e(r['title'])}</b>{link}<div>{_e(r['summary'])}</div></li>")
            parts.append("</ol>")
        else:
            parts.append(f"<pre>{_e(tool.text)}</pre>")
    parts.append("</div>")
    return "".join(parts)


def _turn_html(turn: TurnView) -> str:
    label = {
        "answer": "answer",
        "image_search": "image search",
        "text_search": "text search",
    }.get(turn.kind, "malformed turn")
    out = [
        f'<div class="mm-turn mm-kind-{_e(turn.kind)}"><div class="mm-turn-head">turn {turn.index + 1}: {label}</div>',
        f'<pre class="mm-text">{_e(turn.text.strip())}</pre>',
    ]
    if turn.kind == "invalid" and turn.reason:
        out.append(f'<div class="mm-err">malformed: {_e(turn.reason)}</div>')
    elif turn.refusal:
        out.append(f'<div class="mm-err">refused: {_e(turn.refusal)}</div>')
    if turn.tool is not None:
        out.append(_tool_html(turn.tool))
    out.append("</div>")
    return "".join(out)


def reward_html(reward: dict[str, float]) -> str:
    if not reward:
        return ""
    names = [("total", "reward"), ("acc", "accuracy"), ("format", "format"), ("penalty", "search penalty")]
    cells = [f"<td>{_e(label)}</td><td>{reward[k]:.3f}</td>" for k, label in names if k in reward]
    rest = [f"<td>{_e(k)}</td><td>{v:g}</td>" for k, v in reward.items() if k not in dict(names)]
    return '<table class="mm-reward"><tr>' + "</tr><tr>".join(cells + rest) + "</tr></table>"


def trajectory_html(view: TrajView) -> str:
    """The whole trajectory as one HTML fragment (see the module docstring)."""
    out = ['<div class="mm-traj">']
    if view.caption:
        out.append(f'<div class="mm-caption">{_e(view.caption)}</div>')
    q_img = (
        f'<img class="mm-qimg" src="{image_data_uri(view.question_image, 256)}" alt="question image">'
        if view.question_image is not None
        else ""
    )
    out.append(f'<div class="mm-question">{q_img}<b>Question:</b> {_e(view.question)}</div>')
    out += [_turn_html(t) for t in view.turns]
    if view.error:
        out.append(f'<div class="mm-err">error: {_e(view.error)}</div>')
    if view.finish_reason is None:
        out.append('<div class="mm-running">generating...</div>')
    else:
        answer = view.final_answer if view.final_answer is not None else "(no answer)"
        mark = {True: " (correct)", False: " (wrong)", None: ""}[view.correct]
        out.append(
            f'<div class="mm-final"><b>Final answer:</b> <span class="mm-answer">{_e(answer)}</span>{mark}'
            f' <span class="mm-finish">finish: {_e(view.finish_reason)}</span></div>'
        )
        if view.gold:
            out.append(f'<div class="mm-gold"><b>Gold:</b> {_e(" | ".join(view.gold))}</div>')
        out.append(reward_html(view.reward))
    out.append("</div>")
    return "".join(out)


CSS = """
.mm-traj {font-size: 14px; line-height: 1.4}
.mm-caption {color: #666; font-size: 12px; margin-bottom: 4px}
.mm-question {margin-bottom: 8px}
.mm-qimg {width: 112px; image-rendering: pixelated; vertical-align: middle; margin-right: 8px; border: 1px solid #ccc}
.mm-turn {border-left: 3px solid #4a7bd0; padding: 4px 8px; margin: 8px 0}
.mm-turn.mm-kind-answer {border-left-color: #2e9e4f}
.mm-turn.mm-kind-invalid {border-left-color: #c0392b}
.mm-turn-head, .mm-tool-head {font-weight: bold; font-size: 12px; color: #555}
.mm-text {white-space: pre-wrap; margin: 2px 0; font-family: inherit}
.mm-tool {background: rgba(127,127,127,0.08); padding: 6px; margin-top: 4px; border-radius: 4px}
.mm-thumbs {display: flex; flex-wrap: wrap; gap: 8px}
.mm-result {margin: 0; width: 110px; font-size: 12px; text-align: center}
.mm-thumb {width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated; border: 1px solid #ccc}
.mm-nothumb {display: block; width: 96px; font-size: 11px; color: #888; font-style: italic}
.mm-pages li {margin-bottom: 4px}
.mm-err {color: #c0392b}
.mm-final {margin-top: 8px}
.mm-answer {font-weight: bold}
.mm-finish {color: #666; font-size: 12px}
.mm-reward td {padding: 1px 8px; border: 1px solid #ddd}
.mm-running {color: #888; font-style: italic}
.mm-msg-error {color: #c0392b; font-weight: bold; padding: 8px}
"""


# ------------------------------------------------------------------------------------------------ text
def trajectory_text(view: TrajView) -> str:
    """The trajectory as plain text (the `infer` command's output)."""
    lines = [f"question: {view.question}"]
    if view.error:
        lines.append(f"error: {view.error}")
    for t in view.turns:
        lines += ["", f"=== assistant turn {t.index + 1} ===", t.text.strip()]
        what = t.kind if t.kind != "invalid" else f"invalid: {t.reason}"
        lines.append(f"--- action: {what}{': ' + t.content if t.content else ''}")
        if t.refusal and t.kind != "invalid":
            lines.append(f"--- refused: {t.refusal}")
        if t.tool is not None:
            status = "ok" if t.tool.ok else f"error: {t.tool.error}"
            lines.append(f"--- {t.tool.name} ({status})")
            if t.tool.name == "image_search":
                items = [
                    f"[image {f'{img.size[0]}x{img.size[1]}' if img is not None else 'not stored'}] {title}"
                    for img, title in image_results(t.tool)
                ]
            else:
                items = [f"{r['title']} <{r['url']}> {r['summary']}" for r in text_results(t.tool)]
            lines += [f"    {x}" for x in (items or t.tool.text.splitlines()) if x.strip()]
    if view.finish_reason is not None:
        lines += ["", f"final answer: {view.final_answer}", f"finish: {view.finish_reason}"]
        if view.gold:
            lines.append(f"gold: {' | '.join(view.gold)}")
        if view.reward:
            lines.append("reward: " + ", ".join(f"{k}={v:g}" for k, v in view.reward.items()))
    return "\n".join(lines)
