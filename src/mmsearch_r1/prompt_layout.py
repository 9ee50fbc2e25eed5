"""Prompt layout choices that belong to a prompt set, not to code, and the import of the original's prompt files.

A prompt-set directory may hold `layout.yaml` with:

- `system`: `none` (no system message, the default), `template_default` (a system message holding the chat
  template's own default system prompt, as when a template is applied to a conversation without one), or any
  other string (that text is the system message);
- `tool_turn_newline`: true (default) when a tool turn starts with a newline after the assistant's
  `<|im_end|>` (as the chat template writes it); false when the user turn follows `<|im_end|>` directly;
- `strip`: true (default) to strip whitespace around each rendered template; false keeps it (imported texts).

Where the question's images sit is a template choice too: a first-turn template that writes `{{ images }}` once
gets the images there; one that does not gets them before its text.

`import_original(src_dir, out_dir)` turns the three prompt pickles of a user's copy of the original into such a
directory (see `cli/prompts.py`). Each pickle must hold exactly one `str`; it is read by an unpickler that
admits no globals and no persistent ids, so a pickle that would import or call anything is refused before any
of it runs, and one that holds anything but a `str` is refused after loading plain data.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LAYOUT_FILE = "layout.yaml"
ORIGINAL_PICKLES = {
    "round_1": "round_1_user_prompt_qwenvl.pkl",
    "after_image_search": "after_image_search_prompt_qwenvl.pkl",
    "after_text_search": "after_text_search_prompt_qwenvl.pkl",
}


class PromptImportError(ValueError):
    """A prompt file that cannot be imported (names the file and why)."""


@dataclass(frozen=True)
class Layout:
    system: str = "none"
    tool_turn_newline: bool = True
    strip: bool = True

    def system_text(self, template_default: str | None) -> str | None:
        """The system message text to send, or None for no system message."""
        if self.system == "none":
            return None
        if self.system == "template_default":
            if template_default is None:
                raise ValueError(
                    "the prompt set's layout asks for the chat template's default system prompt, but none was "
                    "given (the renderer's chat template writes none)"
                )
            return template_default
        return self.system


def read_layout(directory: Path | None) -> Layout:
    """The layout of a prompt-set directory (defaults when there is no `layout.yaml` or no directory)."""
    if directory is None or not (directory / LAYOUT_FILE).is_file():
        return Layout()
    import yaml

    path = directory / LAYOUT_FILE
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping")
    unknown = set(data) - {"system", "tool_turn_newline", "strip"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known: system, tool_turn_newline, strip")
    system = data.get("system", "none")
    newline, strip = data.get("tool_turn_newline", True), data.get("strip", True)
    if not isinstance(system, str) or not isinstance(newline, bool) or not isinstance(strip, bool):
        raise ValueError(f"{path}: system must be a string, tool_turn_newline and strip true or false")
    return Layout(system, newline, strip)


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it refers to {module}.{name}; only a plain str is accepted")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it uses persistent ids; only a plain str is accepted")


def load_prompt_pickle(path: str | Path) -> str:
    """The one `str` a prompt pickle holds; PromptImportError for anything else (nothing in it is run)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise PromptImportError(f"{p}: cannot read: {e}") from None
    try:
        value = _NoGlobals(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as e:
        raise PromptImportError(f"{p}: refused: {e}") from None
    if not isinstance(value, str):
        raise PromptImportError(f"{p}: refused: it holds a {type(value).__name__}, not a str")
    return value


def _raw(text: str) -> str:
    """Jinja source that renders exactly `text` (no template syntax in it is interpreted)."""
    return (
        "{% raw %}"
        + text.replace("{% endraw %}", "{% endraw %}{{ '{% endraw %}' }}{% raw %}")
        + "{% endraw %}"
    )


def import_original(
    src_dir: str | Path, out_dir: str | Path, *, results_lead_in: str = "", question_label: str = ""
) -> Path:
    """Write a prompt-set directory from the original's three prompt pickles in `src_dir`.

    Layout (the original's): no system message of its own, so the chat template's default one; first user turn
    = round-1 prompt, the question's images, the question; tool turn after a successful search =
    `results_lead_in` + `<information>` + results + `</information>` + newline + `question_label` + question +
    newline + the after-search prompt; after a failed search, the tool's message alone; the user turn follows
    the assistant's `<|im_end|>` without a newline. The lead-in and the question label are sentences of the
    original's rollout code, not of its prompt files: pass them from your copy. Returns `out_dir`.
    """
    src, out = Path(src_dir), Path(out_dir)
    if not src.is_dir():
        raise PromptImportError(f"{src}: not a directory")
    texts = {}
    for part, name in ORIGINAL_PICKLES.items():
        path = src / name
        if not path.is_file():
            raise PromptImportError(f"{src}: missing {name}")
        texts[part] = load_prompt_pickle(path)

    def after(part: str) -> str:
        return (
            "{% if ok %}"
            + _raw(results_lead_in)
            + "<information>{{ results }}</information>\n"
            + _raw(question_label)
            + "{{ question }}\n"
            + _raw(texts[part])
            + "{% else %}{{ results }}{% endif %}"
        )

    files = {
        "first_turn.j2": _raw(texts["round_1"]) + "{{ images }}{{ question }}",
        "after_image_search.j2": after("after_image_search"),
        "after_text_search.j2": after("after_text_search"),
        # the original profile never refuses; the default profile's refusal turn, kept short
        "refusal.j2": "Your last turn was not carried out: {{ reason }}.\n{{ question }}",
        LAYOUT_FILE: "system: template_default\ntool_turn_newline: false\nstrip: false\n",
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        tmp = out / f".{name}.tmp{os.getpid()}"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
    return out
