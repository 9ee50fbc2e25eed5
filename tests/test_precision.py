"""Mixed precision: fp32 master weights with bf16 compute keep every update that pure bf16 rounds away.

One AdamW step at the paper's lr 2e-6 on the tiny Qwen2.5-VL (weights of std 0.02), three ways: fp32 / fp32,
fp32 master / bf16 compute (`precision.MasterWeightPolicy`), pure bf16. Also: the master set-up's gradients are
accumulated in fp32 and synced back after the step, and a checkpoint round trip keeps the master bit for bit.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from tests.test_sft import conversations

from mmsearch_r1.config import ProtocolConfig
from mmsearch_r1.config_io import ConfigError, load_config
from mmsearch_r1.rl import distributed as D
from mmsearch_r1.rl import setup as S
from mmsearch_r1.rl.precision import MasterWeightPolicy
from mmsearch_r1.rl.sft import collate, masked_nll_sum
from mmsearch_r1.rl.sft_data import tokenize_conversation

WEIGHT = "model.language_model.layers.0.mlp.gate_proj.weight"


def _cfg(model_dir, param: str, compute: str, **extra):
    over = {
        "model.path": str(model_dir),
        "model.param_dtype": param,
        "model.compute_dtype": compute,
        "optim.weight_decay": 0.0,
        "optim.grad_clip": 0.0,
        **extra,
    }
    return load_config(None, [f"{k}={v}" for k, v in over.items()])


def _batches(setup, n_micro: int = 2):
    convs = conversations(ProtocolConfig())
    items = [tokenize_conversation(c, setup.renderer, 4096) for c in convs]
    per = len(items) // n_micro
    return [collate(items[i * per : (i + 1) * per], setup.renderer, "cpu") for i in range(n_micro)]


def _master(setup) -> dict[str, torch.Tensor]:
    return {k.removeprefix("model."): v.detach().clone() for k, v in setup.policy.state_dict().items()}


def _one_step(model_dir, param: str, compute: str, lr: float = 2e-6):
    setup = S.build_setup(_cfg(model_dir, param, compute), D.DistInfo(), lr=lr, total_steps=1)
    batches = _batches(setup)
    n_tok = sum(int(b["mask"].sum()) for b in batches)
    before = _master(setup)
    setup.optimizer.zero_grad(set_to_none=True)
    loss = 0.0
    for b in batches:
        nll, _ = masked_nll_sum(setup.policy, b)
        (nll / n_tok).backward()
        loss += float(nll.detach()) / n_tok
    setup.optimizer.step()
    return setup, before, _master(setup), loss


def _changed(before, after, key=WEIGHT) -> float:
    return float((before[key] != after[key]).float().mean())


def test_fp32_master_keeps_every_update_bf16_rounds_them_away(tiny_model_dir):
    torch.manual_seed(0)
    _, b32, a32, loss32 = _one_step(tiny_model_dir, "float32", "float32")
    mixed, bmx, amx, loss_mx = _one_step(tiny_model_dir, "float32", "bfloat16")
    _, b16, a16, loss16 = _one_step(tiny_model_dir, "bfloat16", "bfloat16")
    assert isinstance(mixed.policy, MasterWeightPolicy)
    assert amx[WEIGHT].dtype == torch.float32 and a16[WEIGHT].dtype == torch.bfloat16
    f32, fmx, f16 = _changed(b32, a32), _changed(bmx, amx), _changed(b16, a16)
    print(
        f"fraction of {WEIGHT} changed by one step at lr 2e-6: fp32 {f32:.4f}, mixed {fmx:.4f}, bf16 {f16:.4f}"
    )
    print(f"loss fp32 {loss32:.6f} mixed {loss_mx:.6f} bf16 {loss16:.6f}")
    assert f32 >= 0.99 and fmx >= 0.99
    assert f16 < 0.10
    # the same forward in bf16 compute: within bf16 tolerance of fp32 (2^-8 relative), and not identical
    assert abs(loss_mx - loss32) <= 2**-8 * abs(loss32)
    assert loss_mx != loss32
    # the mixed update is the fp32 update up to bf16 gradient noise: same sign nearly everywhere
    d32, dmx = a32[WEIGHT] - b32[WEIGHT], amx[WEIGHT] - bmx[WEIGHT]
    assert float((torch.sign(d32) == torch.sign(dmx)).float().mean()) > 0.9
    # the compute copy holds the rounded master after the step
    compute = dict(mixed.model.named_parameters())
    assert torch.equal(compute[WEIGHT], amx[WEIGHT].to(torch.bfloat16))


def test_master_grads_accumulate_in_fp32_over_micro_batches(tiny_model_dir):
    setup = S.build_setup(_cfg(tiny_model_dir, "float32", "bfloat16"), D.DistInfo(), lr=1e-3, total_steps=1)
    b1, b2 = _batches(setup)
    master = dict(setup.policy.named_parameters())["model." + WEIGHT]
    compute = dict(setup.model.named_parameters())[WEIGHT]
    masked_nll_sum(setup.policy, b1)[0].backward()
    g1 = master.grad.clone()
    assert g1.dtype == torch.float32 and compute.grad is None  # moved to the master and freed
    setup.optimizer.zero_grad(set_to_none=True)
    masked_nll_sum(setup.policy, b2)[0].backward()
    g2 = master.grad.clone()
    setup.optimizer.zero_grad(set_to_none=True)
    masked_nll_sum(setup.policy, b1)[0].backward()
    masked_nll_sum(setup.policy, b2)[0].backward()
    assert torch.allclose(master.grad, g1 + g2, rtol=1e-6, atol=1e-9)
    assert float(g1.abs().max()) > 0 and float(g2.abs().max()) > 0


def test_checkpoint_keeps_the_fp32_master(tiny_model_dir, tmp_path):
    setup, _, after, _ = _one_step(tiny_model_dir, "float32", "bfloat16")
    S.save(setup, tmp_path, 1, {"data_position": 4}, keep_last=1)
    fresh = S.build_setup(_cfg(tiny_model_dir, "float32", "bfloat16"), D.DistInfo(), lr=2e-6, total_steps=1)
    written = json.loads((tmp_path / "checkpoints" / "step_000001" / "model" / "config.json").read_text())
    assert written["dtype"] == written["text_config"]["dtype"] == "float32"  # says what the weights are
    state = S.resume(fresh, tmp_path)
    assert state["step"] == 1 and state["data_position"] == 4
    got = _master(fresh)
    assert all(torch.equal(got[k], after[k]) for k in after)  # bit for bit, not through bf16
    compute = dict(fresh.model.named_parameters())[WEIGHT]
    assert torch.equal(compute, after[WEIGHT].to(torch.bfloat16))


def test_config_dtypes_and_legacy_keys(tmp_path, caplog):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  dtype: bfloat16\n  trust_remote_code: true\n")
    with caplog.at_level(logging.WARNING):
        c = load_config(cfg)
    assert (c.model.param_dtype, c.model.compute_dtype) == ("bfloat16", "bfloat16")
    assert "model.dtype" in caplog.text and "model.param_dtype" in caplog.text
    assert "model.trust_remote_code" in caplog.text and "ignored" in caplog.text
    assert load_config(None, ["model.compute_dtype=bfloat16"]).model.param_dtype == "float32"
    with pytest.raises(ConfigError, match="model.param_dtype='bfloat16' with model.compute_dtype='float32'"):
        load_config(None, ["model.param_dtype=bfloat16"])
    with pytest.raises(ConfigError, match="needs loss scaling"):
        load_config(None, ["model.compute_dtype=float16"])
    with pytest.raises(ConfigError, match="model.compute_dtype='int8' must be one of"):
        load_config(None, ["model.compute_dtype=int8"])
    with pytest.raises(ConfigError, match="data.min_pixels=5000 must be <= data.max_pixels=4000"):
        load_config(None, ["data.min_pixels=5000", "data.max_pixels=4000"])
    for name in ("paper_qwen25vl7b_fvqa", "released_single_node"):
        m = load_config(f"configs/{name}.yaml").model
        assert (m.param_dtype, m.compute_dtype) == ("float32", "bfloat16")


def test_master_grads_are_the_same_with_gradient_checkpointing(tiny_model_dir):
    grads = []
    for gc in (False, True):
        cfg = _cfg(tiny_model_dir, "float32", "bfloat16", **{"model.gradient_checkpointing": gc})
        setup = S.build_setup(cfg, D.DistInfo(), lr=1e-3, total_steps=1)
        setup.model.train()
        b1, _ = _batches(setup)
        masked_nll_sum(setup.policy, b1)[0].backward()
        grads.append({n: p.grad for n, p in setup.policy.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    assert all(grads[1][n] is not None for n in grads[1])  # every master got its gradient through the hook
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], rtol=1e-3, atol=1e-6), n
