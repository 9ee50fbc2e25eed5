"""The agent loop under both protocol profiles (scripted policy, byte renderer, fake tools).

Well-formed branches give the same trajectory under both profiles; the branches where the original's turn rules
differ (docs/protocol_and_reward.md) are checked under each profile.
"""

from __future__ import annotations

import pytest

from mmsearch_r1.config import ProtocolConfig, RolloutConfig
from mmsearch_r1.rl.sft_data import build_conversation
from mmsearch_r1.rollout.engine import ScriptedEngine
from mmsearch_r1.rollout.loop import run_rollouts
from mmsearch_r1.rollout.rendering import RendererAdapter
from mmsearch_r1.rollout.testing import ByteRenderer, FakeTool
from mmsearch_r1.rollout.trajectory import check_invariants
from mmsearch_r1.types import Answers, ImageData, Sample, ToolResult

ANSWER = "<reason>I know it.</reason><answer>Paris</answer>"
IMAGE = "<reason>Look it up.</reason><search><img></search>"
TEXT = "<reason>Need facts.</reason><text_search>eiffel tower city</text_search>"
PROFILES = {
    "default": ProtocolConfig(max_searches=3, max_text_searches=2),
    "original": ProtocolConfig(profile="original", max_searches=3, max_text_searches=2),
}


def _png() -> ImageData:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (56, 56), "red").save(buf, format="PNG")
    return ImageData(bytes=buf.getvalue())


SAMPLE = Sample("s0", "Which city is this?", [_png()], Answers("Paris"))


def _tools():
    return {
        "image_search": FakeTool(["Eiffel Tower - Wikipedia\n"]),
        "text_search": FakeTool(["1. Paris is the capital of France.\n"]),
    }


def _run(script: list[str], proto: ProtocolConfig, tools=None):
    renderer = ByteRenderer()
    engine = ScriptedEngine(lambda req: script[req.turn_index], renderer.encode, renderer.special.im_end)
    tools = tools or _tools()
    (traj,) = run_rollouts(
        [SAMPLE],
        engine=engine,
        renderer=renderer,
        tools=tools,
        protocol=proto,
        rollout=RolloutConfig(max_new_tokens_per_turn=200, max_response_tokens=4000),
        n=1,
    )
    assert check_invariants(traj, RendererAdapter(renderer).token_ids()) == []
    return traj, tools


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("script", [[ANSWER], [IMAGE, ANSWER], [TEXT, ANSWER], [IMAGE, TEXT, ANSWER]])
def test_well_formed_branches_agree(profile: str, script: list[str]) -> None:
    traj, tools = _run(script, PROFILES[profile])
    assert traj.finish_reason == "answer" and len(traj.turns) == len(script)
    assert [t.refusal for t in traj.turns] == [None] * len(script)
    assert len(tools["image_search"].calls) == sum(s == IMAGE for s in script)
    assert len(tools["text_search"].calls) == sum(s == TEXT for s in script)


def test_search_without_reasoning() -> None:
    traj, tools = _run(["<search><img></search>", ANSWER], PROFILES["original"])
    assert traj.finish_reason == "answer" and len(tools["image_search"].calls) == 1
    traj, tools = _run(["<search><img></search>", ANSWER], PROFILES["default"])
    assert traj.finish_reason == "answer" and tools["image_search"].calls == []
    assert traj.turns[0].refusal and traj.turns[0].obs_end > traj.turns[0].obs_start  # a refusal turn


def test_turn_without_action_ends_the_original() -> None:
    traj, _ = _run(["I am not sure.", ANSWER], PROFILES["original"])
    assert traj.finish_reason == "no_action" and len(traj.turns) == 1
    assert traj.turns[0].end == len(traj.response_ids)  # nothing after the turn
    traj, _ = _run(["I am not sure.", ANSWER], PROFILES["default"])
    assert traj.finish_reason == "answer" and len(traj.turns) == 2


def test_over_limit_search_ends_the_original() -> None:
    script = [IMAGE, IMAGE, ANSWER]
    traj, tools = _run(script, PROFILES["original"])
    assert traj.finish_reason == "tool_limit" and len(traj.turns) == 2
    assert "image search" in (traj.turns[1].refusal or "") and len(tools["image_search"].calls) == 1
    traj, _ = _run(script, PROFILES["default"])
    assert traj.finish_reason == "answer" and len(traj.turns) == 3


def test_sft_builder_follows_the_profile() -> None:
    result = ToolResult(["Eiffel Tower - Wikipedia\n"])
    conv = build_conversation(
        SAMPLE, [("<search><img></search>", result), (ANSWER, None)], protocol=PROFILES["original"]
    )
    assert [m.role for m in conv.messages] == ["user", "assistant", "user", "assistant"]
    assert "<information>" in conv.messages[2].content[0]
    with pytest.raises(ValueError, match="turn 1 ends the conversation \\(no_action\\)"):
        build_conversation(SAMPLE, [("no action", None), (ANSWER, None)], protocol=PROFILES["original"])


def test_sft_builder_follows_the_layout(tmp_path) -> None:
    (tmp_path / "set").mkdir()
    for name in ("first_turn", "after_image_search", "after_text_search", "refusal"):
        (tmp_path / "set" / f"{name}.j2").write_text(
            "{{ question }}{% if results is defined %}{{ results }}{% endif %}"
        )
    (tmp_path / "set" / "layout.yaml").write_text("system: template_default\n")
    with pytest.raises(ValueError, match="default system prompt, but none was given"):
        build_conversation(
            SAMPLE, [(ANSWER, None)], protocol=PROFILES["default"], prompt_set=str(tmp_path / "set")
        )
    conv = build_conversation(
        SAMPLE,
        [(ANSWER, None)],
        protocol=PROFILES["default"],
        prompt_set=str(tmp_path / "set"),
        template_system="S",
    )
    assert [m.role for m in conv.messages] == ["system", "user", "assistant"] and conv.messages[
        0
    ].content == ["S"]
