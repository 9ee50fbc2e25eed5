"""The Ask tab: an image (uploaded, or one of the demo world's test images), a question, optional gold answers
and sampling controls; the agent's conversation streams into the page turn by turn (`agent.Agent.ask`).

Bad input is answered on the page, never by a crash: a file that is not an image, an empty question, a
rollout that fails. Without a model the tab says how to make one instead of the controls' result.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mmsearch_r1.app.view import trajectory_html

log = logging.getLogger(__name__)

NO_MODEL = (
    "**No model loaded.** Make the demo's model in under a minute with `mmsearch-r1 demo --quick` "
    "(it writes `runs/demo`; this app picks it up when started from the same directory), or start the app "
    "with `--model DIR` (and `--config`/`--search` for its search tools)."
)


def message_html(text: str, kind: str = "error") -> str:
    import html

    return f'<div class="mm-msg mm-msg-{kind}">{html.escape(text)}</div>'


def write_examples(world_dir: Path, out_dir: Path, limit: int = 6) -> list[list[str]]:
    """Write up to `limit` test images of a demo world (alternating data sources) as PNGs into `out_dir`;
    rows [image path, question, gold answers joined by ' | ']."""
    from mmsearch_r1.data.reader import read_samples

    test = world_dir / "data" / "test.parquet"
    if not test.is_file():
        return []
    samples = read_samples(test).samples
    by_source: dict[str, list[Any]] = {}
    for s in samples:
        by_source.setdefault(s.data_source, []).append(s)
    picked: list[Any] = []
    for i in range(limit):
        for group in by_source.values():
            if i < len(group) and len(picked) < limit:
                picked.append(group[i])
    rows = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for k, s in enumerate(picked):
        path = out_dir / f"example_{k}_{s.data_source}.png"
        s.images[0].load().save(path)
        rows.append([str(path), s.question, " | ".join(s.answers.all())])
    return rows


def build_ask_tab(gr: Any, agent: Any, examples: list[list[str]]) -> None:
    """Add the tab's components and events to the enclosing `gr.Blocks` (inside a `gr.Tab`)."""
    if agent is None:
        gr.Markdown(NO_MODEL, elem_id="ask-no-model")
        return
    gr.Markdown(
        f"Model: `{agent.setup.model_dir}`. Pick an example or upload an image, ask, and watch it search."
    )
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="Upload an image", type="filepath", elem_id="ask-upload")
            image = gr.Image(type="filepath", label="Question image", interactive=False, elem_id="ask-image")
            question = gr.Textbox(label="Question", elem_id="ask-question", lines=2)
            gold = gr.Textbox(label="Gold answers (optional; | between several)", elem_id="ask-gold")
            with gr.Row():
                temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.1, label="Temperature (0 = greedy)")
                max_turns = gr.Slider(
                    1, 8, value=agent.setup.config.protocol.max_turns, step=1, label="Max turns"
                )
            ask = gr.Button("Ask", variant="primary", elem_id="ask-button")
            if examples:
                gr.Examples(
                    examples=examples, inputs=[image, question, gold], label="Demo world test questions"
                )
        with gr.Column(scale=2):
            out = gr.HTML(value="", elem_id="ask-output")

    def on_upload(path: Any):
        from mmsearch_r1.types import ImageData

        if not path:
            return None, ""
        try:
            ImageData(path=str(path)).load()
        except (ValueError, OSError) as e:
            name = Path(str(path)).name
            return None, message_html(f"That file is not an image this app can read: {name} ({e}).")
        return str(path), ""

    upload.upload(on_upload, upload, [image, out])

    def run(image_path: Any, q: str, g: str, temp: float, turns: float):
        from mmsearch_r1.types import ImageData

        if not image_path:
            yield message_html("No image: upload an image or pick an example.")
            return
        try:
            img = ImageData(path=str(image_path))
            img.load()
        except (ValueError, OSError) as e:
            yield message_html(
                f"That file is not an image this app can read: {Path(str(image_path)).name} ({e})."
            )
            return
        if not (q or "").strip():
            yield message_html("The question is empty: type a question about the image.")
            return
        golds = [x.strip() for x in (g or "").split("|") if x.strip()]
        try:
            for view in agent.ask(img, q, gold=golds, temperature=float(temp), max_turns=int(turns)):
                yield trajectory_html(view)
        except ValueError as e:
            yield message_html(str(e))
        except Exception as e:  # the page reports it; the app keeps serving
            log.exception("ask failed")
            yield message_html(f"The rollout failed: {type(e).__name__}: {e}")

    ask.click(run, [image, question, gold, temperature, max_turns], out)
    question.submit(run, [image, question, gold, temperature, max_turns], out)
