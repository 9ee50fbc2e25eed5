"""The Ask tab's agent (app/agent.py): a question through the real agent loop with a real tiny Qwen2.5-VL and
the demo world's local search indexes, reported turn by turn, with the reward when gold answers are given."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmsearch_r1.app.agent import Agent, AgentSetup
from mmsearch_r1.app.view import trajectory_html
from mmsearch_r1.config_io import load_config
from mmsearch_r1.rollout.trajectory import FINISH_REASONS
from mmsearch_r1.types import ImageData


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mmsearch_r1.data.reader import read_samples
    from mmsearch_r1.world.build import build_world

    w = build_world(tmp_path_factory.mktemp("world"), seed=0, size="small")
    cfg = load_config(w.search_config)
    cfg.rollout.max_new_tokens_per_turn = 24
    cfg.rollout.max_response_tokens = 400
    tail = [s for s in read_samples(w.test).samples if s.data_source == "world_tail"]
    return cfg, tail[0]


def _forced(tiny_model_dir, gold: str):
    """The tiny model's HF engine with the actions forced: image search, then the gold answer."""
    from mmsearch_r1.model import load_model, load_processor
    from mmsearch_r1.rollout.engine import ForcedActionEngine
    from mmsearch_r1.rollout.hf_engine import HFEngine

    renderer = load_processor(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir))
    actions = ["</reason><search><img></search>", f"</reason><answer> {gold}</answer>"]

    def decide(req):
        return ("<reason>", actions[min(req.turn_index, 1)])

    return ForcedActionEngine(
        HFEngine(model, renderer), decide, renderer.encode, renderer.special.im_end, sampled_tokens=4
    )


def test_ask_streams_turns_tool_results_and_reward(world, tiny_model_dir) -> None:
    cfg, sample = world
    gold = sample.answers.ground_truth
    agent = Agent(AgentSetup(tiny_model_dir, cfg, engine=_forced(tiny_model_dir, gold)))
    snapshots = []
    for view in agent.ask(sample.images[0], sample.question, gold=[gold]):
        tool = view.turns[-1].tool if view.turns else None
        snapshots.append((len(view.turns), tool is not None, view.finish_reason))
        last = view
    # turn 1 appears, then its image search result, then turn 2, then the finished trajectory
    assert snapshots == [(1, False, None), (1, True, None), (2, False, None), (2, False, "answer")]
    search = last.turns[0].tool
    assert search.name == "image_search" and search.ok
    assert len(search.thumbnails) == cfg.search.top_k and all(t is not None for t in search.thumbnails)
    assert last.final_answer == gold and last.correct is True
    assert last.reward["acc"] == 1.0 and last.reward["format"] == 1.0
    fw = cfg.reward.format_weight  # (1 - a) * acc * (1 - search penalty) + a * format, one search made
    assert last.reward["total"] == pytest.approx((1 - fw) * (1 - cfg.reward.search_penalty) + fw)
    html = trajectory_html(last)
    assert html.count('class="mm-thumb"') == cfg.search.top_k and "(correct)" in html
    assert "mm-qimg" in html


def test_ask_with_the_model_itself_and_bad_inputs(world, tiny_model_dir, tmp_path) -> None:
    cfg, sample = world
    agent = Agent(AgentSetup(tiny_model_dir, cfg))
    views = list(agent.ask(sample.images[0], sample.question, max_turns=2))
    final = views[-1]
    assert final.finish_reason in FINISH_REASONS and 1 <= len(final.turns) <= 2
    assert final.reward == {} and final.correct is None  # no gold given: no reward
    assert [v.finish_reason for v in views[:-1]] == [None] * (len(views) - 1)

    not_image = tmp_path / "x.png"
    not_image.write_text("text")
    for kwargs, match in [
        ({"image": sample.images[0], "question": "  "}, "question: empty"),
        ({"image": None, "question": "q"}, "image: none given"),
        ({"image": ImageData(path=str(not_image)), "question": "q"}, "cannot decode image"),
        ({"image": sample.images[0], "question": "q", "max_turns": 0}, "max_turns: must be >= 1"),
        ({"image": sample.images[0], "question": "q", "temperature": -1.0}, "temperature: must be >= 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            list(agent.ask(**kwargs))


def test_app_without_a_model_says_how_to_make_one_and_cleans_up() -> None:
    from mmsearch_r1.app.ask_tab import NO_MODEL
    from mmsearch_r1.app.server import AppSettings, build_app

    blocks, cleanup = build_app(AppSettings())
    values = [getattr(b, "value", None) for b in blocks.blocks.values()]
    assert NO_MODEL in values
    (temp,) = [Path(p) for p in blocks.mm_allowed]
    assert temp.is_dir()
    cleanup()
    assert not temp.exists()
