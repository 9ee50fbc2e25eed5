"""Real rollouts: tiny Qwen2.5-VL + HF engine + the real tools over a local BM25 corpus and image index.

Group 0 of every sample is pushed through image search -> text search -> answer by forcing only the protocol
tags around tokens the model samples; the other groups sample freely (a random model rarely writes valid tags,
so they exercise the refusal path). Checked: the token-record invariants, that sampled tokens are exactly the
engine's, the limits, the finish reasons, and the log-probs of a full-sequence forward.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image, ImageDraw

from mmsearch_r1.config import ProtocolConfig, RolloutConfig, SearchConfig
from mmsearch_r1.model import compute_position_ids
from mmsearch_r1.rollout.engine import ForcedActionEngine, GenerationRequest, SamplingParams
from mmsearch_r1.rollout.hf_engine import HFEngine
from mmsearch_r1.rollout.loop import run_rollouts
from mmsearch_r1.rollout.rendering import RendererAdapter
from mmsearch_r1.rollout.testing import build_byte_vlm
from mmsearch_r1.rollout.trajectory import FINISH_REASONS, check_invariants
from mmsearch_r1.types import Answers, ImageData, Sample

PAGES = [
    ("http://local/heron", "Grey heron", "The grey heron is a wading bird. It lives near lakes and rivers."),
    ("http://local/tower", "Old tower", "The old tower was built in 1820 by the river. It is made of stone."),
    ("http://local/mill", "Red mill", "The red mill grinds wheat. It was painted red in 1901."),
    ("http://local/boat", "Blue boat", "The blue boat carries people across the lake every morning."),
]
COLORS = ["red", "green", "blue", "orange"]


def drawing(i: int, shift: int = 0) -> Image.Image:
    img = Image.new("RGB", (96, 96), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([10 + shift, 10 + 8 * i, 60 + shift, 50 + 8 * i], fill=COLORS[i])
    d.ellipse([50, 50 - shift, 90, 90 - shift], fill=COLORS[(i + 1) % 4])
    return img


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    from mmsearch_r1.search.local_image import build_image_index
    from mmsearch_r1.search.local_text import build_text_index
    from mmsearch_r1.tools import build_tools

    root = tmp_path_factory.mktemp("search")
    with open(root / "pages.jsonl", "w") as f:
        for url, title, text in PAGES:
            f.write(json.dumps({"url": url, "title": title, "text": text}) + "\n")
    build_text_index(root / "pages.jsonl", root / "text")
    (root / "imgs").mkdir()
    with open(root / "imgs" / "images.jsonl", "w") as f:
        for i, (url, title, _) in enumerate(PAGES):
            drawing(i).save(root / "imgs" / f"{i}.png")
            f.write(json.dumps({"image": f"{i}.png", "title": title, "url": url}) + "\n")
    build_image_index(root / "imgs" / "images.jsonl", root / "image")
    cfg = SearchConfig(
        top_k=2,
        text_backend={"type": "local", "index_dir": str(root / "text")},
        image_backend={"type": "local", "index_dir": str(root / "image")},
    )
    return build_tools(cfg)


@pytest.fixture(scope="module", params=["tiny", "byte"])
def setup(request, tmp_path_factory):
    """The spine's tiny model (BPE tokenizer, `build_tiny_model`) and the byte-level test model."""
    if request.param == "byte":
        return build_byte_vlm(1)
    from mmsearch_r1.model import build_tiny_model, load_model, load_processor

    path = build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)
    return load_model(path), load_processor(path)


def samples():
    out = []
    for i in range(2):
        buf = __import__("io").BytesIO()
        drawing(i, shift=3).save(buf, format="PNG")
        out.append(
            Sample(
                f"s{i}",
                f"When was the thing in picture {i} built?",
                [ImageData(bytes=buf.getvalue())],
                Answers("1820"),
            )
        )
    return out


def decide(req: GenerationRequest):
    if not req.key.endswith("#0"):
        return None
    actions = [
        "<search><img></search>",
        "<text_search>old tower stone</text_search>",
        "<answer>1820</answer>",
    ]
    return ("<reason>", "</reason>" + actions[min(req.turn_index, 2)])


def test_real_rollouts_with_local_search(setup, tools):
    model, renderer = setup
    engine = ForcedActionEngine(HFEngine(model, renderer), decide, renderer.encode, renderer.special.im_end)
    rcfg = RolloutConfig(max_new_tokens_per_turn=96, max_response_tokens=3000, max_images=4)
    checked = 0
    trajs = run_rollouts(
        samples(),
        engine=engine,
        renderer=renderer,
        tools=tools,
        protocol=ProtocolConfig(),
        rollout=rcfg,
        params=SamplingParams(temperature=1.0, seed=7),
        n=3,
    )
    ids = RendererAdapter(renderer).token_ids()
    inner = {(req.key, req.turn_index): out for req, out in engine.inner_outputs}
    for t in trajs:
        assert check_invariants(t, ids) == []
        assert t.finish_reason in FINISH_REASONS and t.finish_reason != "error"
        assert len(t.response_ids) <= rcfg.max_response_tokens and len(t.images) <= rcfg.max_images
        assert len(t.turns) <= 3 and t.n_image_searches <= 1 and t.n_text_searches <= 1
        for turn in t.turns:
            out = inner[(f"{t.sample_id}#{t.group_index}", turn.index)]
            assert [t.response_ids[i] for i in range(turn.start, turn.end) if t.loss_mask[i]] == out.token_ids
            assert turn.end - turn.start - turn.n_sampled in (0, 1) or t.group_index == 0
        if t.group_index == 0:
            assert [a.kind for a in t.actions] == ["image_search", "text_search", "answer"]
            img_tool, txt_tool = t.turns[0].tool, t.turns[1].tool
            assert img_tool.ok and img_tool.n_images == 2 and img_tool.n_images_shown == 2
            assert any(title in img_tool.text for _, title, _ in PAGES)
            assert txt_tool.ok and "1820" in txt_tool.text and txt_tool.arg == "old tower stone"
            assert len(t.images) == 3 and t.finish_reason == "answer"
            obs = renderer.decode(t.response_ids[t.turns[1].obs_start : t.turns[1].obs_end])
            assert "<information>" in obs and "When was the thing in picture" in obs
        else:  # free sampling from a random model: refused turns, always told why, always a finish reason
            assert all(turn.refusal for turn in t.turns) or t.finish_reason == "max_tokens"
    # log-probs: one full-sequence fp32 forward reproduces the engine's at every mask-1 token
    for t in trajs:
        seq = torch.tensor([t.input_ids])
        pv, grid = renderer.encode_images(t.images)
        mm = (seq == model.config.image_token_id).int()
        pos = compute_position_ids(model, seq, grid, torch.ones_like(seq))
        with torch.no_grad():
            logits = model(
                input_ids=seq, position_ids=pos, pixel_values=pv, image_grid_thw=grid, mm_token_type_ids=mm
            ).logits[0]
        lp = torch.log_softmax(logits.float(), dim=-1)
        p = len(t.prompt_ids)
        for i, (m, s) in enumerate(zip(t.loss_mask, t.sampled_logprobs, strict=True)):
            if m:
                assert abs(lp[p + i - 1, t.response_ids[i]].item() - s) < 1e-4
                checked += i >= t.turns[0].obs_end > 0  # sampled after a tool turn with thumbnails
    assert checked > 10
