"""The agent loop driven by a scripted policy (no sampling, no model): every branch, limit and record."""

from __future__ import annotations

import io
import json
import time

import pytest
from PIL import Image

from mmsearch_r1.config import ProtocolConfig, RolloutConfig
from mmsearch_r1.rollout.engine import ScriptedEngine
from mmsearch_r1.rollout.loop import IMAGE_DROPPED_NOTE, run_rollouts
from mmsearch_r1.rollout.rendering import RendererAdapter
from mmsearch_r1.rollout.testing import ByteRenderer, FakeTool
from mmsearch_r1.rollout.trajectory import check_invariants, write_jsonl
from mmsearch_r1.types import Answers, ImageData, Sample

ANSWER = "<reason>I know it.</reason><answer>Paris</answer>"
IMAGE = "<reason>Look it up.</reason><search><img></search>"


def text_search(q: str) -> str:
    return f"<reason>Need facts.</reason><text_search>{q}</text_search>"


def png(size: tuple[int, int], color: str = "red") -> ImageData:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return ImageData(bytes=buf.getvalue())


def sample(i: int = 0) -> Sample:
    return Sample(f"s{i}", f"Which city is shown in picture {i}?", [png((56, 56))], Answers("Paris"))


def make_tools(**kw):
    thumbs = [png((28, 28), "blue"), "Eiffel Tower - Wikipedia\n", png((28, 56), "green"), "Paris at night\n"]
    tools = {
        "image_search": FakeTool(thumbs),
        "text_search": FakeTool(["1. Paris is the capital of France.\n"]),
    }
    tools.update(kw)
    return tools


def rollout(scripts, *, tools=None, n=1, samples=None, proto=None, **cfg):
    """scripts: {sample_id: [turn texts]} (same script for every group member)."""
    renderer = ByteRenderer()
    engine = ScriptedEngine(
        lambda req: scripts[req.key.split("#")[0]][req.turn_index], renderer.encode, renderer.special.im_end
    )
    rcfg = RolloutConfig(**{"max_new_tokens_per_turn": 200, "max_response_tokens": 4000, **cfg})
    trajs = run_rollouts(
        samples or [sample()],
        engine=engine,
        renderer=renderer,
        tools=tools if tools is not None else make_tools(),
        protocol=proto or ProtocolConfig(),
        rollout=rcfg,
        n=n,
    )
    ids = RendererAdapter(renderer).token_ids()
    for t in trajs:
        assert check_invariants(t, ids) == [], check_invariants(t, ids)
        assert len(t.response_ids) <= rcfg.max_response_tokens
    return trajs, engine, renderer


def obs_text(traj, renderer, k):
    t = traj.turns[k]
    return renderer.decode(traj.response_ids[t.obs_start : t.obs_end])


def test_answer_directly():
    (t,), engine, r = rollout({"s0": [ANSWER]})
    assert t.finish_reason == "answer" and len(t.turns) == 1
    assert t.turns[0].action.kind == "answer" and t.turns[0].action.content == "Paris"
    assert t.loss_mask == [1] * len(t.response_ids)  # the whole response was sampled
    assert t.sampled_logprobs == [-0.5] * len(t.response_ids)
    assert t.response_ids == r.encode(ANSWER) + [r.special.im_end]
    assert len(t.images) == 1 and t.image_sources == ["question"]
    prompt = r.decode(t.prompt_ids)
    assert (
        prompt.endswith("<|im_start|>assistant\n") and "Question: Which city is shown in picture 0?" in prompt
    )


def test_image_then_answer():
    tools = make_tools()
    (t,), _, r = rollout({"s0": [IMAGE, ANSWER]}, tools=tools)
    assert t.finish_reason == "answer" and [a.kind for a in t.actions] == ["image_search", "answer"]
    assert tools["image_search"].calls == [(None, "s0")] and tools["text_search"].calls == []
    assert len(t.images) == 3 and t.image_sources[1:] == ["turn 1 image_search"] * 2
    assert t.image_grid_thw[1:] == [(1, 2, 2), (1, 4, 2)]
    obs = obs_text(t, r, 0)
    assert obs.startswith("\n<|im_start|>user\n<information><|vision_start|>")
    assert "Eiffel Tower - Wikipedia" in obs and "</information>" in obs
    assert "Question: Which city is shown in picture 0?" in obs and obs.endswith("<|im_start|>assistant\n")
    assert "<text_search>" in obs  # what may come next: a text search is still allowed
    assert t.turns[0].tool.ok and t.turns[0].tool.n_images == 2 and t.turns[0].tool.n_images_shown == 2
    # mask: assistant turns 1, the tool turn 0
    t0, t1 = t.turns
    assert set(t.loss_mask[t0.start : t0.end]) == {1} and set(t.loss_mask[t0.obs_start : t0.obs_end]) == {0}
    assert set(t.loss_mask[t1.start : t1.end]) == {1} and t1.end == len(t.response_ids)


def test_image_then_text_then_answer():
    tools = make_tools()
    (t,), _, r = rollout({"s0": [IMAGE, text_search("Eiffel Tower city"), ANSWER]}, tools=tools)
    assert t.finish_reason == "answer"
    assert [a.kind for a in t.actions] == ["image_search", "text_search", "answer"]
    assert tools["text_search"].calls == [("Eiffel Tower city", "s0")]
    obs = obs_text(t, r, 1)
    assert "Paris is the capital of France." in obs and '"Eiffel Tower city"' in obs
    assert "This is your last turn" in obs
    assert t.n_image_searches == 1 and t.n_text_searches == 1


def test_over_limit_search_gets_an_observation_then_answer():
    # image search in turn 2 is refused (first turn only), the model is told, then answers in turn 3
    tools = make_tools()
    (t,), _, r = rollout({"s0": [text_search("q"), IMAGE, ANSWER]}, tools=tools)
    assert t.finish_reason == "answer" and tools["image_search"].calls == []
    assert t.turns[1].refusal == "image search is only allowed in the first turn"
    assert t.turns[1].tool is None
    obs = obs_text(t, r, 1)
    assert "not carried out: image search is only allowed in the first turn" in obs
    assert "Question: Which city is shown in picture 0?" in obs


def test_second_text_search_over_limit_and_search_on_last_turn():
    tools = make_tools()
    proto = ProtocolConfig(max_turns=3, max_text_searches=1)
    (t,), _, _ = rollout({"s0": [text_search("a"), text_search("b"), IMAGE]}, tools=tools, proto=proto)
    assert len(tools["text_search"].calls) == 1
    assert "text search limit reached" in t.turns[1].refusal
    assert t.finish_reason == "tool_limit" and "last allowed turn" in t.turns[2].refusal
    assert t.turns[-1].obs_end == 0 and t.turns[-1].end == len(t.response_ids)  # nothing after the last turn


def test_malformed_turns():
    (t,), _, r = rollout({"s0": ["just guessing Paris", "<answer>Paris</answer>", "still <b>no</b> tags"]})
    assert t.finish_reason == "max_turns"
    assert [a.kind for a in t.actions] == ["invalid"] * 3
    assert "must start with <reason>" in obs_text(t, r, 0)
    (t,), _, r = rollout({"s0": ["oops", ANSWER]})
    assert (
        t.finish_reason == "answer" and t.turns[0].refusal == "the turn must start with <reason>...</reason>"
    )


def test_tool_error_and_tool_exception():
    failing = FakeTool(["the search backend timed out"], ok=False, error="timeout")

    def boom(arg, sample):
        raise RuntimeError("backend exploded")

    (t,), _, r = rollout({"s0": [IMAGE, ANSWER]}, tools=make_tools(image_search=failing))
    assert t.finish_reason == "answer" and not t.turns[0].tool.ok and t.turns[0].tool.error == "timeout"
    obs = obs_text(t, r, 0)
    assert "<information>the search backend timed out</information>" in obs and len(t.images) == 1
    assert "These are" not in obs
    (t,), _, r = rollout({"s0": [text_search("x"), ANSWER]}, tools=make_tools(text_search=boom))
    assert t.finish_reason == "answer" and "backend exploded" in t.turns[0].tool.error
    assert "<information>The text search failed and returned no results." in obs_text(t, r, 0)
    (t,), _, r = rollout({"s0": [IMAGE, ANSWER]}, tools={})
    assert t.finish_reason == "answer" and t.turns[0].tool.error == "no tool 'image_search'"


def test_turn_cut_at_its_token_limit_is_closed_with_a_forced_end():
    long_turn = "<reason>" + "blah " * 40 + "</reason><answer>x</answer>"
    (t,), _, r = rollout({"s0": [long_turn, ANSWER]}, max_new_tokens_per_turn=50)
    t0 = t.turns[0]
    assert t0.finish == "length" and t0.end - t0.start == 51 and t0.n_sampled == 50
    assert t.loss_mask[t0.end - 1] == 0 and t.response_ids[t0.end - 1] == r.special.im_end
    assert t.finish_reason == "answer"


def test_budget_exhaustion_ends_at_a_turn_boundary():
    big = FakeTool([png((280, 280)), "title one\n", png((280, 280)), "title two\n"])  # 100 pads each
    (full,), _, r = rollout({"s0": [IMAGE, ANSWER]}, tools=make_tools(image_search=big))
    t0 = full.turns[0]
    with_images = t0.obs_end  # response length after the tool turn with both thumbnails
    note = len(r.encode(IMAGE_DROPPED_NOTE)) - (1 + 100 + 1)
    without_images = with_images + 2 * note
    assert without_images < with_images
    # room for the tool turn without thumbnails only: they are replaced by a note, the trajectory goes on
    budget = without_images + 60  # room for the 51-token answer turn
    (t,), _, r = rollout(
        {"s0": [IMAGE, ANSWER]}, tools=make_tools(image_search=big), max_response_tokens=budget
    )
    assert t.finish_reason == "answer" and len(t.images) == 1 and t.turns[0].tool.n_images_shown == 0
    assert obs_text(t, r, 0).count(IMAGE_DROPPED_NOTE) == 2 and t.turns[0].obs_end == without_images
    # no room for the tool turn at all: ends at the turn boundary with max_tokens
    (t,), _, r = rollout(
        {"s0": [IMAGE, ANSWER]}, tools=make_tools(image_search=big), max_response_tokens=without_images + 5
    )
    assert t.finish_reason == "max_tokens" and len(t.turns) == 1 and t.turns[0].obs_end == 0
    assert len(t.response_ids) == t0.end
    # the budget cuts an assistant turn: closed with a forced <|im_end|>, then max_tokens
    (t,), _, _ = rollout(
        {"s0": ["<reason>" + "x" * 500]}, max_response_tokens=120, max_new_tokens_per_turn=200
    )
    assert t.finish_reason == "max_tokens" and len(t.response_ids) == 120 and t.loss_mask[-1] == 0


def test_max_images_drops_extra_thumbnails():
    (t,), _, r = rollout({"s0": [IMAGE, ANSWER]}, max_images=2)
    assert len(t.images) == 2 and t.turns[0].tool.n_images == 2 and t.turns[0].tool.n_images_shown == 1
    assert obs_text(t, r, 0).count(IMAGE_DROPPED_NOTE) == 1


def test_prompt_too_long_is_an_error_not_a_crash():
    (t,), _, _ = rollout({"s0": [ANSWER]}, max_prompt_tokens=50)
    assert t.finish_reason == "error" and "max_prompt_tokens=50" in t.error and t.response_ids == []


@pytest.mark.parametrize("schedule", ["async", "round_sync"])
def test_groups_and_order(schedule):
    scripts = {"s0": [ANSWER], "s1": [IMAGE, ANSWER], "s2": [text_search("q"), ANSWER]}
    trajs, engine, _ = rollout(scripts, n=3, samples=[sample(0), sample(1), sample(2)], schedule=schedule)
    assert [(t.sample_id, t.group_index) for t in trajs] == [(f"s{i}", g) for i in range(3) for g in range(3)]
    assert all(t.finish_reason == "answer" for t in trajs)
    keys = [req.key for call in engine.calls for req in call]
    assert len(keys) == 3 + 6 + 6 and len(set(keys)) == 9


def test_async_generation_does_not_wait_for_a_slow_tool():
    slow = FakeTool(["slow result"], delay_s=lambda arg, s: 1.0 if s.id == "s0" else 0.0)
    scripts = {"s0": [text_search("q"), ANSWER], "s1": [text_search("q"), ANSWER]}
    tools = make_tools(text_search=slow)
    trajs, engine, _ = rollout(scripts, samples=[sample(0), sample(1)], tools=tools)
    fast, slow_t = trajs[1], trajs[0]
    assert fast.finish_reason == slow_t.finish_reason == "answer"
    assert fast.stats["wall_s"] < 0.8 <= slow_t.stats["wall_s"]  # s1 finished while s0's tool still ran
    batches = [[r.key for r in call] for call in engine.calls]
    assert batches == [["s0#0", "s1#0"], ["s1#0"], ["s0#0"]]
    # round_sync waits for the slow tool before anyone's second turn
    trajs, engine, _ = rollout(scripts, samples=[sample(0), sample(1)], tools=tools, schedule="round_sync")
    assert trajs[1].stats["wall_s"] >= 0.8
    assert [[r.key for r in call] for call in engine.calls] == [["s0#0", "s1#0"], ["s0#0", "s1#0"]]


def test_max_batch_size_caps_batches():
    trajs, engine, _ = rollout({"s0": [ANSWER]}, n=5, max_batch_size=2)
    assert [len(c) for c in engine.calls] == [2, 2, 1]


def test_json_export_is_readable():
    tools = make_tools()
    (t,), _, r = rollout({"s0": [IMAGE, text_search("Eiffel Tower city"), ANSWER]}, tools=tools)
    buf = io.StringIO()
    assert write_jsonl([t], buf, decode=r.decode) == 1
    d = json.loads(buf.getvalue())
    assert d["finish_reason"] == "answer" and d["question"] == "Which city is shown in picture 0?"
    assert [x["action"]["kind"] for x in d["turns"]] == ["image_search", "text_search", "answer"]
    assert d["turns"][0]["tool"]["name"] == "image_search" and d["turns"][0]["tool"]["n_images"] == 2
    assert "Eiffel Tower - Wikipedia" in d["turns"][0]["observation"]
    assert [im["size"] for im in d["images"]] == [[56, 56], [28, 28], [28, 56]]
    assert d["turns"][2]["text"] == ANSWER and d["prompt"].startswith("<|im_start|>user")


def test_invariant_checker_has_teeth():
    (t,), _, r = rollout({"s0": [IMAGE, ANSWER]})
    ids = RendererAdapter(r).token_ids()
    bad = json.loads(json.dumps({"m": t.loss_mask}))["m"]
    bad[t.turns[0].obs_start] = 1
    t2 = type(t)(**{**t.__dict__, "loss_mask": bad})
    assert any("observation" in e or "image" in e or "outside" in e for e in check_invariants(t2, ids))
    cut = type(t)(**{**t.__dict__, "image_grid_thw": t.image_grid_thw[:-1] + [(1, 4, 4)]})
    assert any("pad tokens" in e for e in check_invariants(cut, ids))
    lp = type(t)(**{**t.__dict__, "sampled_logprobs": [0.1] * len(t.response_ids)})
    assert check_invariants(lp, ids)


def test_tools_run_concurrently():
    tools = make_tools(image_search=FakeTool(["r"], delay_s=0.4))
    t0 = time.perf_counter()
    rollout({"s0": [IMAGE, ANSWER]}, n=6, tools=tools)
    assert time.perf_counter() - t0 < 6 * 0.4 * 0.6


def test_results_arriving_in_a_burst_share_one_batch():
    # results 50 ms apart; a 0.5 s coalescing gap joins them, no gap splits them. The margins (10x either way)
    # keep the test independent of machine load: only a stall of > 0.5 s between two arrivals could split them.
    burst = FakeTool(["r"], delay_s=lambda arg, s: 0.2 + 0.05 * int(s.id[1:]))
    scripts = {f"s{i}": [text_search("q"), ANSWER] for i in range(6)}
    kw = dict(samples=[sample(i) for i in range(6)], tools=make_tools(text_search=burst))
    _, engine, _ = rollout(scripts, coalesce_s=0.5, **kw)
    assert [len(c) for c in engine.calls] == [6, 6]  # the second turns of all six in one batch
    _, engine, _ = rollout(scripts, coalesce_s=0.0, **kw)
    assert len(engine.calls) > 2  # without coalescing the burst is split


def test_prompt_set_from_a_directory(tmp_path):
    from mmsearch_r1.rollout.prompts import PromptSet

    for name in ("first_turn", "after_image_search", "after_text_search", "refusal"):
        (tmp_path / f"{name}.j2").write_text(f"[{name}] {{{{ question }}}} {{{{ results }}}}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PromptSet(str(tmp_path / "nope"))
    ps = PromptSet(str(tmp_path))
    parts = ps.observation(
        "image_search", ["t", png((28, 28))], ok=True, question="Q?", allowed=[], turns_left=1
    )
    assert parts[0] == "[after_image_search] Q? t" and isinstance(parts[1], ImageData)
    (tmp_path / "after_text_search.j2").write_text("no marker {{ question }}")
    with pytest.raises(ValueError, match="results"):
        PromptSet(str(tmp_path)).observation(
            "text_search", ["x"], ok=True, question="Q", allowed=[], turns_left=1
        )
    (tmp_path / "refusal.j2").unlink()
    with pytest.raises(FileNotFoundError, match="refusal.j2"):
        PromptSet(str(tmp_path))


def test_first_turn_rendered_once_per_sample_and_shared_by_its_group(monkeypatch):
    """The n rollouts of a sample start from one rendering (ids and pixel values), made once per `run`; two
    samples with the same question and image still render apart, and each trajectory keeps its own id list."""
    calls = []
    real = ByteRenderer.render

    def counting(self, messages, **kw):
        calls.append(messages)
        return real(self, messages, **kw)

    monkeypatch.setattr(ByteRenderer, "render", counting)
    twin = Sample(
        "s0", sample(0).question, [png((56, 56))], Answers("Paris")
    )  # same id and content, new object
    scripts = {"s0": [ANSWER], "s1": [IMAGE, ANSWER]}
    trajs, engine, _ = rollout(scripts, n=4, samples=[sample(0), sample(1), twin])
    assert len(calls) == 3  # one per sample object, not one per trajectory (12)
    by = {}
    for t in trajs:
        by.setdefault(t.sample_id, []).append(t)
    assert len(by["s0"]) == 8 and len(by["s1"]) == 4
    first = [req for call in engine.calls for req in call if req.turn_index == 0]
    assert len(first) == 12 and len({tuple(r.prompt_ids) for r in first}) == 2
    group = [t for t in trajs if t.sample_id == "s1"]
    assert len({id(t.prompt_ids) for t in group}) == 4  # the ids are copied per trajectory
    assert all(t.prompt_ids == group[0].prompt_ids for t in group)
