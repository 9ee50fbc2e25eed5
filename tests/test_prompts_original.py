"""`mmsearch-r1 prompts import-original`: pickles written as the original's are (one `str` each) become a prompt
set whose first turn and tool turns are, token for token, the original's layout (chat template applied to
round-1 prompt + image + question with the template's default system prompt; tool turns "user" straight after
`<|im_end|>`, lead-in, `<information>` results `</information>`, question label + question, after-search prompt).
Pickles holding anything but a `str` are refused without running them."""

from __future__ import annotations

import io
import pickle
import pickletools
from pathlib import Path

import pytest
from PIL import Image

from mmsearch_r1.cli import main
from mmsearch_r1.config import ProtocolConfig, RolloutConfig
from mmsearch_r1.prompt_layout import ORIGINAL_PICKLES, PromptImportError, load_prompt_pickle
from mmsearch_r1.rollout.engine import ScriptedEngine
from mmsearch_r1.rollout.loop import run_rollouts
from mmsearch_r1.rollout.testing import FakeTool
from mmsearch_r1.types import Answers, ImageData, Sample

ROUND_1 = "Think inside <reason> tags, then search or answer.\nHere is the image and the question:\n"
AFTER_IMAGE = "Use the image results above. Answer or search with text.\n"
AFTER_TEXT = "Use the text results above and answer now.\n"
LEAD, LABEL = "Found: ", "Question again: "
# a Qwen-style template that writes a default system prompt when the conversation has none
TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _png(size, color) -> ImageData:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return ImageData(bytes=buf.getvalue())


def _write_pickles(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for part, text in (
        ("round_1", ROUND_1),
        ("after_image_search", AFTER_IMAGE),
        ("after_text_search", AFTER_TEXT),
    ):
        (d / ORIGINAL_PICKLES[part]).write_bytes(pickle.dumps(text))
    return d


def test_pickles_of_a_str_use_only_plain_opcodes(tmp_path: Path) -> None:
    d = _write_pickles(tmp_path / "orig")
    ops = {op.name for op, _, _ in pickletools.genops((d / ORIGINAL_PICKLES["round_1"]).read_bytes())}
    assert ops <= {"PROTO", "FRAME", "BINUNICODE", "SHORT_BINUNICODE", "MEMOIZE", "STOP"}
    assert load_prompt_pickle(d / ORIGINAL_PICKLES["round_1"]) == ROUND_1


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path("/nonexistent/should_not_run"),))


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (pickle.dumps(_Boom()), "refers to"),
        (pickle.dumps(["a list"]), "holds a list, not a str"),
        (pickle.dumps(b"bytes"), "holds a bytes"),
        (b"not a pickle", "refused"),
    ],
)
def test_anything_but_a_str_is_refused(tmp_path: Path, payload: bytes, fragment: str, capsys) -> None:
    d = _write_pickles(tmp_path / "orig")
    (d / ORIGINAL_PICKLES["after_text_search"]).write_bytes(payload)
    with pytest.raises(PromptImportError, match=fragment):
        load_prompt_pickle(d / ORIGINAL_PICKLES["after_text_search"])
    assert main(["prompts", "import-original", str(d), str(tmp_path / "out")]) == 1
    assert "after_text_search_prompt_qwenvl.pkl" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_imported_set_reproduces_the_original_layout_token_for_token(tiny_model_dir, tmp_path: Path) -> None:
    from mmsearch_r1.model import load_processor

    src = _write_pickles(tmp_path / "orig")
    out = tmp_path / "prompts" / "original"
    cmd = [
        "prompts",
        "import-original",
        str(src),
        str(out),
        "--results-lead-in",
        LEAD,
        "--question-label",
        LABEL,
    ]
    assert main(cmd) == 0
    renderer = load_processor(tiny_model_dir)
    assert renderer.template_system_prompt() is None  # the tiny model's template writes no system prompt
    renderer.tokenizer.chat_template = TEMPLATE
    assert renderer.template_system_prompt() == "You are a helpful assistant."
    tok, sp = renderer.tokenizer, renderer.special

    question = "Which bird is this?"
    sample = Sample("s0", question, [_png((56, 84), "red")], Answers("heron"))
    thumb = _png((56, 56), "blue")
    image_results = ["[Image Search Results]\n1. ", thumb, " title: Grey heron\n"]
    text_results = ["[Text Search Results]\n1. (http://local/heron) The grey heron is a wading bird.\n"]
    tools = {"image_search": FakeTool(image_results), "text_search": FakeTool(text_results)}
    script = [
        "<reason>look</reason><search><img></search>",
        "<reason>more</reason><text_search>grey heron</text_search>",
        "<reason>ok</reason><answer>heron</answer>",
    ]
    engine = ScriptedEngine(lambda req: script[req.turn_index], renderer.encode, sp.im_end)
    proto = ProtocolConfig(
        profile="original", max_searches=3, max_text_searches=2, image_search_first_turn_only=False
    )
    (traj,) = run_rollouts(
        [sample], engine=engine, renderer=renderer, tools=tools, protocol=proto,
        rollout=RolloutConfig(prompt_set=str(out), max_prompt_tokens=100_000, max_response_tokens=100_000), n=1,
    )  # fmt: skip
    assert traj.finish_reason == "answer", traj.error

    def vision(image: ImageData) -> str:
        _, grid = renderer.encode_images([image])
        return (
            "<|vision_start|>"
            + "<|image_pad|>" * renderer.num_image_tokens(grid[0].tolist())
            + "<|vision_end|>"
        )

    def ids(text: str) -> list[int]:  # the original tokenized whole strings, special tokens recognized
        return tok(text, add_special_tokens=False)["input_ids"]

    # first turn: chat template over round-1 prompt + <image> + question, no system message of its own
    first = tok.apply_chat_template(
        [{"role": "user", "content": ROUND_1 + "<image>" + question}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert first.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert traj.prompt_ids == ids(first.replace("<image>", vision(sample.images[0])))

    def tool_turn(results: str, after: str) -> list[int]:
        body = LEAD + "<information>" + results + "</information>\n" + LABEL + question + "\n" + after
        return ids("<|im_start|>user\n" + body + "<|im_end|>\n<|im_start|>assistant\n")

    t0, t1 = traj.turns[0], traj.turns[1]
    image_text = image_results[0] + vision(thumb) + image_results[2]
    assert traj.response_ids[t0.obs_start : t0.obs_end] == tool_turn(image_text, AFTER_IMAGE)
    assert traj.response_ids[t1.obs_start : t1.obs_end] == tool_turn(text_results[0], AFTER_TEXT)
    assert traj.response_ids[t0.end - 1] == sp.im_end and t0.obs_start == t0.end  # no newline in between


def test_failed_search_turn_is_the_tools_message_alone(tmp_path: Path) -> None:
    from mmsearch_r1.rollout.prompts import PromptSet

    out = tmp_path / "p" / "original"
    assert main(["prompts", "import-original", str(_write_pickles(tmp_path / "orig")), str(out)]) == 0
    ps = PromptSet(str(out))
    parts = ps.observation(
        "text_search", ["[Text Search Results] error\n"], ok=False, question="q", allowed=[], turns_left=1
    )
    assert parts == ["[Text Search Results] error\n"]


def test_missing_imported_set_says_how_to_make_it(tmp_path: Path) -> None:
    from mmsearch_r1.rollout.prompts import PromptSet

    with pytest.raises(FileNotFoundError, match="prompts import-original"):
        PromptSet(str(tmp_path / "prompts" / "original"))
