"""KV reuse across turns in the HF engine: the same tokens and log-probs as a full prefill, and the trainer's.

Tiny random Qwen2.5-VL (`build_byte_vlm`, large init range so that positions and images change the logits a lot).
Each comparison runs the same requests through an engine with `kv_reuse=True` and one with `kv_reuse=False`
(every row a full prefill), and checks the counters to be sure the cache was (or was not) used.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from mmsearch_r1.config import ProtocolConfig, RolloutConfig
from mmsearch_r1.model import compute_position_ids
from mmsearch_r1.rollout.engine import ForcedActionEngine, GenerationRequest, SamplingParams
from mmsearch_r1.rollout.hf_cache import KVStore
from mmsearch_r1.rollout.hf_engine import HFEngine
from mmsearch_r1.rollout.loop import run_rollouts
from mmsearch_r1.rollout.testing import FakeTool, build_byte_vlm
from mmsearch_r1.types import Answers, Message, Sample

pytest.importorskip("transformers")

SAMPLED = SamplingParams(temperature=0.8, top_p=0.95, top_k=100, seed=3)
GREEDY = SamplingParams(greedy=True)


@pytest.fixture(scope="module")
def setup():
    return build_byte_vlm(0)


# ---------------------------------------------------------------------------------------------- helpers
def trainer_logprobs(model, renderer, traj, temperature):
    """One full-sequence forward with the model's rope-index positions (as the trainer computes them)."""
    ids = torch.tensor([traj.input_ids])
    pv, grid = renderer.encode_images(traj.images) if traj.images else (None, None)
    pos = compute_position_ids(model, ids, grid, torch.ones_like(ids))
    with torch.no_grad():
        logits = model(input_ids=ids, position_ids=pos, pixel_values=pv, image_grid_thw=grid).logits[0]
    lp = torch.log_softmax(logits.float() / temperature, dim=-1)
    p = len(traj.prompt_ids)
    return [lp[p + i - 1, tok].item() for i, tok in enumerate(traj.response_ids)]


def agent_run(setup, engine, params):
    """Two questions x 3 rollouts; group 0 forced through image search -> text search -> answer (thumbnails in
    the tool turns), the others sample freely (refusal turns, several turns)."""
    model, renderer = setup

    def forced(req):
        if not req.key.endswith("#0"):
            return None
        actions = ["<search><img></search>", "<text_search>object</text_search>", "<answer>x</answer>"]
        return ("<reason>", "</reason>" + actions[min(req.turn_index, 2)])

    thumbs = [Image.new("RGB", (56, 84), "purple"), "Title A\n", Image.new("RGB", (84, 56), "orange"), "B\n"]
    tools = {"image_search": FakeTool(thumbs), "text_search": FakeTool(["Summary: x is y.\n"])}
    samples = [
        Sample(f"q{i}", f"What is object {i}?", [Image.new("RGB", (56, 56), c)], Answers("x"))
        for i, c in enumerate(["red", "green"])
    ]
    wrapped = ForcedActionEngine(engine, forced, renderer.encode, renderer.special.im_end, sampled_tokens=12)
    rcfg = RolloutConfig(max_new_tokens_per_turn=80, max_response_tokens=1500, schedule="round_sync")
    return run_rollouts(
        samples,
        engine=wrapped,
        renderer=renderer,
        tools=tools,
        protocol=ProtocolConfig(),
        rollout=rcfg,
        params=params,
        n=3,
    )


def first_turn(renderer, i, size=56):
    r = renderer.render(
        [Message("user", [Image.new("RGB", (size, 56), "red"), f"What is object number {i}?"])]
    )
    return r


def request(rendered_chunks, key, turn, max_new, with_pixels=True):
    ids = [t for r in rendered_chunks for t in r.input_ids]
    images = [im for r in rendered_chunks for im in r.images]
    if not with_pixels:
        return GenerationRequest(ids, max_new, images=images, key=key, turn_index=turn)
    chunks = [r for r in rendered_chunks if r.images]
    return GenerationRequest(
        ids,
        max_new,
        images=images,
        pixel_values=[r.pixel_values for r in chunks],
        image_grid_thw=[r.image_grid_thw for r in chunks],
        key=key,
        turn_index=turn,
    )


class _Ids:
    def __init__(self, ids):
        self.input_ids, self.images, self.pixel_values, self.image_grid_thw = list(ids), [], None, None


def next_turn(renderer, chunks, out, parts):
    """The chunks of the next turn's prompt: the previous ones, the generated turn (closed), the tool turn."""
    ids = list(out.token_ids) + ([] if out.finish_reason == "stop" else [renderer.special.im_end])
    return [*chunks, _Ids(ids), renderer.render_tool_turn(parts)]


def max_diff(a, b):
    return max(
        abs(x - y) for oa, ob in zip(a, b, strict=True) for x, y in zip(oa.logprobs, ob.logprobs, strict=True)
    )


def mixed_batch(setup, params, engine=None):
    """Turn 0 of three trajectories, then one batch of: two continuations with thumbnails in the tool turn
    (different cached and new lengths), a new trajectory, and a continuation under a key never seen.
    Returns (outputs with reuse, outputs without, the reuse engine, the batch)."""
    model, renderer = setup
    engine = engine or HFEngine(model, renderer, kv_reuse=True)
    base = HFEngine(model, renderer, kv_reuse=False)
    t0 = [[first_turn(renderer, i, 56 + 28 * i)] for i in range(3)]
    reqs0 = [request(c, f"t{i}", 0, 6 + 9 * i) for i, c in enumerate(t0)]
    outs0 = engine.generate(reqs0, params)
    thumbs = [
        ["Result: ", Image.new("RGB", (84, 56), "blue"), "a thumbnail\n"],
        [Image.new("RGB", (56, 56), "white"), "one\n", Image.new("RGB", (112, 84), "black"), "two\n"],
        ["No results.\n"],
    ]
    t1 = [next_turn(renderer, c, o, p) for c, o, p in zip(t0, outs0, thumbs, strict=True)]
    batch = [
        request(t1[1], "t1", 1, 20),
        request([first_turn(renderer, 7, 84)], "t7", 0, 15),
        request(t1[0], "t0", 1, 12, with_pixels=False),  # the engine encodes only the new images itself
        request(t1[2], "unseen", 1, 18),
    ]
    return engine.generate(batch, params), base.generate(batch, params), engine, batch


# ---------------------------------------------------------------------------------------------- (a) agent loop
@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_agent_rollouts_equal_with_and_without_reuse_and_the_trainer(setup, params):
    model, renderer = setup
    on = HFEngine(model, renderer, kv_reuse=True)
    a = agent_run(setup, on, params)
    b = agent_run(setup, HFEngine(model, renderer, kv_reuse=False), params)
    stats = on.cache_stats
    assert stats["hits"] >= 6 and stats["prefill_tokens_saved"] > 1000, stats
    assert stats["shared_prefill_rows"] == 2  # first turns of groups 1 and 2 (group 0 gets a forced prefix)
    assert sum(len(t.turns) for t in a) >= 12 and any(len(t.images) == 3 for t in a)
    assert [t.response_ids for t in a] == [t.response_ids for t in b]
    checked = 0
    for ta, tb in zip(a, b, strict=True):
        ref = trainer_logprobs(model, renderer, ta, params.logprob_temperature)
        for i, m in enumerate(ta.loss_mask):
            if m:
                assert abs(ta.sampled_logprobs[i] - tb.sampled_logprobs[i]) < 1e-4, (ta.sample_id, i)
                assert abs(ta.sampled_logprobs[i] - ref[i]) < 1e-4, (ta.sample_id, ta.group_index, i)
                checked += i > ta.turns[0].end  # tokens of later turns: generated after a cache hit
    assert checked > 50


# ---------------------------------------------------------------------------------------------- (b) mixed batches
@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_mixed_batch_of_cached_and_uncached_rows_with_new_images(setup, params):
    on, off, engine, batch = mixed_batch(setup, params)
    assert engine.cache_stats["hits"] == 2  # t1 and t0; t7 (turn 0) and "unseen" miss
    assert engine.cache_stats["misses"] == 3 + 2
    assert [o.token_ids for o in on] == [o.token_ids for o in off]
    assert max_diff(on, off) < 1e-4
    assert all(len(o.token_ids) > 3 for o in on)
    # the continuations' new parts hold thumbnails: their image pads come after the cached prefix
    assert sum(t == setup[1].special.image_pad for t in batch[0].prompt_ids[-60:]) > 0


def test_a_shifted_position_or_misplaced_kv_is_caught(setup, monkeypatch):
    """The comparison of the mixed batch has teeth: a continuation one position off, or K/V one slot off,
    changes the tokens or the log-probs."""
    lookup = KVStore.lookup

    def shifted(self, *a):
        e = lookup(self, *a)
        return dataclasses.replace(e, next_pos=e.next_pos + 1) if e is not None else None

    monkeypatch.setattr(KVStore, "lookup", shifted)
    on, off, _, _ = mixed_batch(setup, GREEDY)
    assert [o.token_ids for o in on] != [o.token_ids for o in off] or max_diff(on, off) > 1e-3
    monkeypatch.undo()

    def late(t):  # one slot late: the first slot empty, the last token's K/V lost
        return torch.cat([torch.zeros_like(t[:, :1]), t[:, :-1]], dim=1)

    def rolled(self, *a):  # (attention over the past is order-free: a mere permutation would change nothing)
        e = lookup(self, *a)
        if e is None:
            return None
        return dataclasses.replace(e, kv=[(late(k), late(v)) for k, v in e.kv])

    monkeypatch.setattr(KVStore, "lookup", rolled)
    on, off, _, _ = mixed_batch(setup, GREEDY)
    assert [o.token_ids for o in on] != [o.token_ids for o in off] or max_diff(on, off) > 1e-3


# ---------------------------------------------------------------------------------------------- (c) weights
@pytest.mark.parametrize("how", ["load_weights", "in_place_update"])
def test_new_weights_invalidate_the_cache(how):
    model, renderer = build_byte_vlm(1)
    engine = HFEngine(model, renderer, kv_reuse=True)
    chunks = [first_turn(renderer, 0)]
    out0 = engine.generate([request(chunks, "a", 0, 10)], GREEDY)[0]
    assert engine.cache_stats["entries"] == 1
    nxt = request(
        next_turn(renderer, chunks, out0, ["Result: ", Image.new("RGB", (56, 56), "blue")]), "a", 1, 12
    )
    torch.manual_seed(5)
    new = {n: p + 0.05 * torch.randn_like(p) for n, p in model.named_parameters()}
    if how == "load_weights":
        engine.load_weights(new.items())
    else:  # what an optimizer step on a shared model does
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(new[n])
    out1 = engine.generate([nxt], GREEDY)[0]
    assert engine.cache_stats["hits"] == 0 and engine.cache_stats["invalidated"] == 1
    fresh = HFEngine(model, renderer, kv_reuse=False).generate([nxt], GREEDY)[0]
    assert out1.token_ids == fresh.token_ids
    assert max_diff([out1], [fresh]) < 1e-4


def test_stale_kv_would_change_the_result():
    """Why the invalidation matters: the same continuation on the old K/V gives other log-probs."""
    model, renderer = build_byte_vlm(1)
    engine = HFEngine(model, renderer, kv_reuse=True)
    chunks = [first_turn(renderer, 0)]
    out0 = engine.generate([request(chunks, "a", 0, 10)], GREEDY)[0]
    nxt = request(
        next_turn(renderer, chunks, out0, ["Result: ", Image.new("RGB", (56, 56), "blue")]), "a", 1, 12
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    engine._weights_version = engine._param_version()  # pretend nothing changed: the stale entry is used
    stale = engine.generate([nxt], GREEDY)[0]
    assert engine.cache_stats["hits"] == 1
    fresh = HFEngine(model, renderer, kv_reuse=False).generate([nxt], GREEDY)[0]
    assert stale.token_ids != fresh.token_ids or max_diff([stale], [fresh]) > 1e-3


# ---------------------------------------------------------------------------------------------- (d) misses
def test_a_prompt_that_does_not_extend_the_cached_ids_misses(setup):
    model, renderer = setup
    engine = HFEngine(model, renderer, kv_reuse=True)
    chunks = [first_turn(renderer, 3)]
    out0 = engine.generate([request(chunks, "a", 0, 10)], SAMPLED)[0]
    nxt = request(next_turn(renderer, chunks, out0, ["Nothing found.\n"]), "a", 1, 12)
    changed = dataclasses.replace(nxt, prompt_ids=list(nxt.prompt_ids))
    changed.prompt_ids[len(chunks[0].input_ids) + 1] = renderer.encode("Z")[0]  # inside the cached turn
    out1 = engine.generate([changed], SAMPLED)[0]
    assert engine.cache_stats["hits"] == 0 and engine.cache_stats["misses"] == 2
    fresh = HFEngine(model, renderer, kv_reuse=False).generate([changed], SAMPLED)[0]
    assert out1.token_ids == fresh.token_ids and max_diff([out1], [fresh]) < 1e-4
    # the miss replaced the entry: the changed conversation's own continuation now hits
    n0 = len(chunks[0].input_ids)
    nxt2 = request(
        next_turn(renderer, [chunks[0], _Ids(changed.prompt_ids[n0:])], out1, ["More.\n"]), "a", 2, 5
    )
    engine.generate([nxt2], SAMPLED)
    assert engine.cache_stats["hits"] == 1


def test_turn_zero_and_the_byte_bound_evict(setup):
    model, renderer = setup
    engine = HFEngine(model, renderer, kv_reuse=True)
    reqs = [request([first_turn(renderer, i)], f"k{i}", 0, 4) for i in range(3)]
    engine.generate(reqs, GREEDY)
    assert engine.cache_stats["entries"] == 3
    one = engine.store.entries["k0"].nbytes
    engine.generate([reqs[0]], GREEDY)  # turn 0 again under k0: the old entry is dropped, a new one kept
    assert engine.cache_stats["misses"] == 4 and engine.cache_stats["entries"] == 3
    small = HFEngine(model, renderer, kv_reuse=True, kv_cache_bytes=int(one * 2.5))
    small.generate(reqs, GREEDY)
    assert small.cache_stats["entries"] == 2 and small.cache_stats["evicted"] == 1
    assert list(small.store.entries) == ["k1", "k2"]  # least recently used first out
    off = HFEngine(model, renderer, kv_reuse=False)
    off.generate(reqs, GREEDY)
    assert off.cache_stats["entries"] == 0 and off.cache_stats["misses"] == 0


def test_the_config_switch_and_bound_reach_the_engine(setup):
    from mmsearch_r1.rollout.engines import EngineUnavailable, build_engine, check_engine

    model, renderer = setup
    on = build_engine(RolloutConfig(hf_kv_cache_gb=0.5), renderer, model=model)
    assert on.kv_reuse and on.store.max_bytes == 1 << 29
    off = build_engine(RolloutConfig(hf_kv_reuse=False), renderer, model=model)
    assert not off.kv_reuse
    with pytest.raises(EngineUnavailable, match="hf_kv_cache_gb"):
        check_engine(RolloutConfig(hf_kv_cache_gb=-1.0))


def test_rows_with_the_same_prompt_share_a_prefill_only_with_the_same_pixels(setup):
    """A group's first turns are prefilled once; equal ids with other pixels (same size) are not shared."""
    model, renderer = setup

    def req(color, key):
        r = renderer.render([Message("user", [Image.new("RGB", (56, 56), color), "What is it?"])])
        return GenerationRequest(
            r.input_ids,
            8,
            images=r.images,
            pixel_values=[r.pixel_values],
            image_grid_thw=[r.image_grid_thw],
            key=key,
        )

    batch = [req("red", "a#0"), req("blue", "b#0"), req("red", "a#1"), req("red", "a#2")]
    assert batch[0].prompt_ids == batch[1].prompt_ids
    engine = HFEngine(model, renderer, kv_reuse=True)
    outs = engine.generate(batch, SAMPLED)
    assert engine.cache_stats["shared_prefill_rows"] == 2
    alone = [HFEngine(model, renderer, kv_reuse=False).generate([r], SAMPLED)[0] for r in batch]
    assert [o.token_ids for o in outs] == [o.token_ids for o in alone]
    assert max_diff(outs, alone) < 1e-4
    greedy = engine.generate(batch[:2], GREEDY)  # same ids, other image: other tokens
    assert greedy[0].token_ids != greedy[1].token_ids


def test_release_kv_frees_every_entry(setup):
    model, renderer = setup
    engine = HFEngine(model, renderer, kv_reuse=True)
    engine.generate([request([first_turn(renderer, i)], f"k{i}", 0, 3) for i in range(2)], GREEDY)
    assert engine.cache_stats["entries"] == 2 and engine.cache_stats["bytes"] > 0
    engine.release_kv()
    assert engine.cache_stats["entries"] == 0 and engine.cache_stats["bytes"] == 0
    assert engine.cache_stats["invalidated"] == 0


def test_a_model_with_sliding_window_layers_is_refused():
    model, renderer = build_byte_vlm(2)
    assert model.config.get_text_config().layer_types == ["full_attention"] * 2
    model.config.get_text_config().layer_types = ["sliding_attention", "full_attention"]
    with pytest.raises(ValueError, match="full-attention layers only"):
        HFEngine(model, renderer)


def test_train_mode_with_gradient_checkpointing_is_refused():
    """transformers drops the K/V cache there: the decode steps would see no context."""
    model, renderer = build_byte_vlm(2)
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    model.train()
    engine = HFEngine(model, renderer)
    with pytest.raises(ValueError, match="model.eval"):
        engine.generate([request([first_turn(renderer, 0)], "a", 0, 3)], GREEDY)
    model.eval()
    assert len(engine.generate([request([first_turn(renderer, 0)], "a", 0, 3)], GREEDY)[0].token_ids) == 3


def test_row_sampler_draws_from_the_filtered_distribution():
    """Frequencies follow softmax(scores / T) after top-k / top-p, tokens of probability 0 never come, and each
    row's draws depend only on its own seed."""
    from mmsearch_r1.rollout.hf_engine import _RowSampler

    scores = torch.tensor([[0.0, 1.0, -1.0, 2.0, float("-inf"), 0.5]])
    n = 20000
    for params, keep in [
        (SamplingParams(temperature=0.7, seed=0), [0, 1, 2, 3, 5]),
        (SamplingParams(temperature=1.0, top_k=2, seed=0), [1, 3]),
        (SamplingParams(temperature=1.0, top_p=0.9, seed=0), [0, 1, 3, 5]),
    ]:
        sampler = _RowSampler([11], params)
        want = torch.softmax(sampler.filtered(scores), dim=-1)[0]
        assert sorted(torch.nonzero(want).flatten().tolist()) == keep
        counts = torch.bincount(torch.cat([sampler.sample(scores) for _ in range(n)]), minlength=6).float()
        assert set(torch.nonzero(counts).flatten().tolist()) == set(keep)
        assert torch.allclose(counts / n, want, atol=0.015), (counts / n, want)
    two = _RowSampler([1, 2], SAMPLED)
    alone = _RowSampler([2], SAMPLED)
    wide = torch.randn(2, 50) * 2
    for _ in range(20):
        assert two.sample(wide)[1] == alone.sample(wide[1:])[0]
