"""Engine selection helpers that need no vLLM: the pixel budget the vLLM engine hands to vLLM's image processor
(so its grids match our renderer's) and the pad-run collapse."""

from __future__ import annotations


def test_pixel_budget_of_the_tiny_models_processor(tiny_model_dir):
    from mmsearch_r1.model import load_processor
    from mmsearch_r1.rollout.vllm_engine import collapse_image_pads, pixel_budget

    renderer = load_processor(tiny_model_dir)
    assert pixel_budget(renderer.image_processor) == (56 * 56, 112 * 112)  # TinySizes' min/max pixels
    assert pixel_budget(None) is None
    assert pixel_budget(type("P", (), {"size": {"shortest_edge": 10, "longest_edge": 20}})()) == (10, 20)
    pad = renderer.special.image_pad
    assert collapse_image_pads([1, pad, pad, 2, pad], pad) == ([1, pad, 2, pad], 2)
