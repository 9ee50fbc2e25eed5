"""The HF engine and the agent loop on a real (tiny, random) Qwen2.5-VL: log-prob consistency and token records.

The model is built here from a config (byte-level vocabulary of `ByteRenderer`, real Qwen2-VL image processor),
so these tests need no checkpoint on disk. Weights are drawn with a large init range so that the logits depend
strongly on positions and images (a near-uniform random model would hide position bugs).
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmsearch_r1.config import ProtocolConfig, RolloutConfig
from mmsearch_r1.rollout.engine import ForcedActionEngine, GenerationRequest, SamplingParams
from mmsearch_r1.rollout.hf_engine import HFEngine
from mmsearch_r1.rollout.loop import run_rollouts
from mmsearch_r1.rollout.rendering import RendererAdapter
from mmsearch_r1.rollout.testing import FakeTool, build_byte_vlm
from mmsearch_r1.rollout.trajectory import check_invariants
from mmsearch_r1.types import Answers, Sample

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def setup():
    return build_byte_vlm(0)


def positions(model, input_ids, grid):
    """The position ids the trainer uses: the spine's compute_position_ids (the model's own rope index)."""
    from mmsearch_r1.model import compute_position_ids

    return compute_position_ids(model, input_ids, grid, torch.ones_like(input_ids))


def full_forward_logprobs(model, renderer, traj, temperature, position_ids=None):
    ids = torch.tensor([traj.input_ids])
    pv, grid = renderer.encode_images(traj.images) if traj.images else (None, None)
    pos = positions(model, ids, grid) if position_ids is None else position_ids
    with torch.no_grad():
        logits = (
            model(
                input_ids=ids,
                position_ids=pos,
                pixel_values=pv,
                image_grid_thw=grid,
                mm_token_type_ids=(ids == model.config.image_token_id).int(),
            )
            .logits[0]
            .float()
        )
    lp = torch.log_softmax(logits / temperature, dim=-1)
    p = len(traj.prompt_ids)
    return [lp[p + i - 1, tok].item() for i, tok in enumerate(traj.response_ids)]


def sample(i):
    color = ["red", "green", "blue", "yellow"][i % 4]
    return Sample(f"q{i}", f"What is object {i}?", [Image.new("RGB", (56, 56), color)], Answers("x"))


def tools():
    thumbs = [
        Image.new("RGB", (56, 84), "purple"),
        "Title A\n",
        Image.new("RGB", (84, 56), "orange"),
        "Title B\n",
    ]
    return {"image_search": FakeTool(thumbs), "text_search": FakeTool(["Summary: x is y.\n"])}


def forced(req: GenerationRequest):
    """Group 0 is pushed through image search -> text search -> answer; other groups sample freely."""
    if not req.key.endswith("#0"):
        return None
    actions = ["<search><img></search>", "<text_search>object</text_search>", "<answer>x</answer>"]
    return ("<reason>", "</reason>" + actions[min(req.turn_index, 2)])


def run(setup, n=2, schedule="async", params=None, **cfg):
    model, renderer = setup
    engine = ForcedActionEngine(HFEngine(model, renderer), forced, renderer.encode, renderer.special.im_end)
    rcfg = RolloutConfig(
        **{"max_new_tokens_per_turn": 80, "max_response_tokens": 2000, "schedule": schedule, **cfg}
    )
    params = params or SamplingParams(temperature=0.8, top_p=0.95, top_k=100, seed=3)
    trajs = run_rollouts(
        [sample(0), sample(1)],
        engine=engine,
        renderer=renderer,
        tools=tools(),
        protocol=ProtocolConfig(),
        rollout=rcfg,
        params=params,
        n=n,
    )
    return trajs, engine


def test_logprobs_match_a_full_forward_with_thumbnails(setup):
    model, renderer = setup
    trajs, _ = run(setup)
    checked_after_thumbnails = 0
    for t in trajs:
        ref = full_forward_logprobs(model, renderer, t, 0.8)
        for i, (m, lp) in enumerate(zip(t.loss_mask, t.sampled_logprobs, strict=True)):
            if m:
                assert abs(ref[i] - lp) < 1e-4, (t.sample_id, t.group_index, i, ref[i], lp)
        if len(t.images) > 1:
            first_thumb_turn = next(tt for tt in t.turns if tt.tool and tt.tool.n_images_shown)
            checked_after_thumbnails += sum(t.loss_mask[first_thumb_turn.obs_end :])
    assert checked_after_thumbnails > 20  # sampled tokens that attend to returned thumbnails were checked


def test_the_logprob_check_has_teeth(setup):
    """Sequential 1-D positions (the original's bug) disagree with the engine after images."""
    model, renderer = setup
    trajs, _ = run(setup, n=1)
    t = next(t for t in trajs if len(t.images) == 3)
    ids = torch.tensor([t.input_ids])
    flat = torch.arange(ids.shape[1])[None, None, :].expand(3, 1, -1)
    ref = full_forward_logprobs(model, renderer, t, 0.8, position_ids=flat)
    diffs = [
        abs(ref[i] - lp) for i, (m, lp) in enumerate(zip(t.loss_mask, t.sampled_logprobs, strict=True)) if m
    ]
    assert max(diffs) > 1e-2


def test_mask_records_exactly_what_the_engine_sampled(setup):
    trajs, engine = run(setup)
    model, renderer = setup
    ids = RendererAdapter(renderer).token_ids()
    inner = {(req.key, req.turn_index): out for req, out in engine.inner_outputs}
    for t in trajs:
        assert check_invariants(t, ids) == []
        assert t.finish_reason in ("answer", "max_turns", "tool_limit", "max_tokens")
        for turn in t.turns:
            out = inner[(f"{t.sample_id}#{t.group_index}", turn.index)]
            span = range(turn.start, turn.end)
            sampled = [t.response_ids[i] for i in span if t.loss_mask[i]]
            assert sampled == out.token_ids  # every sampled token kept, in order, none added
            assert [t.sampled_logprobs[i] for i in span if t.loss_mask[i]] == out.logprobs
        if t.group_index == 0:  # forced through both searches: question image + 2 thumbnails
            assert [a.kind for a in t.actions] == ["image_search", "text_search", "answer"]
            assert t.finish_reason == "answer" and len(t.images) == 3
        # every prompt/observation/image token is mask 0 (checked per turn span by check_invariants)
        obs = [i for tt in t.turns for i in range(tt.obs_start, tt.obs_end)]
        assert all(t.loss_mask[i] == 0 for i in obs)
        assert len(t.response_ids) <= 2000


def test_async_and_round_sync_sample_the_same_tokens(setup):
    a, _ = run(setup, schedule="async")
    b, _ = run(setup, schedule="round_sync", max_batch_size=3)
    assert [t.response_ids for t in a] == [t.response_ids for t in b]


def test_greedy_and_batch_independence(setup):
    model, renderer = setup
    engine = HFEngine(model, renderer)
    rendered = [renderer.render([_msg(sample(i))]) for i in range(3)]
    reqs = [
        GenerationRequest(
            r.input_ids,
            5 + 3 * i,
            images=r.images,
            pixel_values=[r.pixel_values],
            image_grid_thw=[r.image_grid_thw],
        )
        for i, r in enumerate(rendered)
    ]
    greedy = engine.generate(reqs, SamplingParams(greedy=True))
    for o, r in zip(greedy, reqs, strict=True):  # cut at the row's own limit or right after <|im_end|>
        stop = renderer.special.im_end
        if o.finish_reason == "length":
            assert len(o.token_ids) == r.max_new_tokens and stop not in o.token_ids
        else:
            assert o.token_ids.index(stop) == len(o.token_ids) - 1 and len(o.token_ids) <= r.max_new_tokens
    alone = [engine.generate([r], SamplingParams(temperature=0.0))[0] for r in reqs]
    assert [o.token_ids for o in alone] == [o.token_ids for o in greedy]
    for a, b in zip(alone, greedy, strict=True):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-4
    top1 = engine.generate(reqs, SamplingParams(temperature=0.7, top_k=1, seed=5))
    assert [o.token_ids for o in top1] == [o.token_ids for o in greedy]
    # sampled log-probs are log_softmax(logits / T), so T changes them for the same tokens
    assert top1[0].logprobs[0] != pytest.approx(greedy[0].logprobs[0])


def _msg(s):
    from mmsearch_r1.types import Message

    return Message("user", [*s.images, s.question])
