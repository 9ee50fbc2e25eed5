"""Weight sync into a generation engine: `distributed.iter_full_params` -> `HFEngine.load_weights`."""

from __future__ import annotations

import pytest
import torch

from mmsearch_r1.model import load_model, load_processor
from mmsearch_r1.rl import distributed as D
from mmsearch_r1.rl.batch import PolicyForward
from mmsearch_r1.rollout.hf_engine import HFEngine


def test_load_weights_copies_every_tensor_and_rejects_mismatch(tiny_model_dir):
    policy_model = load_model(str(tiny_model_dir), "float32", "cpu")
    gen_model = load_model(str(tiny_model_dir), "float32", "cpu")
    with torch.no_grad():
        for p in policy_model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    engine = HFEngine(gen_model, load_processor(str(tiny_model_dir)))
    policy = PolicyForward(policy_model)
    n = engine.load_weights(D.iter_full_params(policy, D.DistInfo()))
    assert n >= len(list(gen_model.parameters()))
    for (name, a), (_, b) in zip(policy_model.named_parameters(), gen_model.named_parameters(), strict=True):
        assert torch.equal(a, b), name
        assert a.data_ptr() != b.data_ptr()  # a copy, not shared storage
    with pytest.raises(ValueError, match="no tensor 'nope'"):
        engine.load_weights([("nope", torch.zeros(1))])
    name, t = next(iter(D.iter_full_params(policy, D.DistInfo())))
    with pytest.raises(ValueError, match="has shape"):
        engine.load_weights([(name, torch.zeros(*t.shape, 2))])
