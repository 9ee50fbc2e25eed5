"""What mixed precision keeps: one AdamW step at the paper's lr 2e-6 on the tiny Qwen2.5-VL, three ways.

fp32 / fp32, fp32 master with bf16 compute (`rl.precision.MasterWeightPolicy`), pure bf16: the fraction of each
weight matrix's entries that the step changed (over every 2-D weight of the text decoder), and the loss of the
same batch (the SFT conversations of tests/test_sft.py) against the fp32 loss. Tiny model seed 0, torch seed 0.

Usage: python benchmarks/precision.py. Ends with one JSON line.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    import torch
    from tests.test_precision import _one_step

    from mmsearch_r1.model.tiny import build_tiny_model

    torch.manual_seed(0)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "m", seed=0)
        losses = {}
        for name, (p, c) in {
            "fp32": ("float32", "float32"),
            "mixed": ("float32", "bfloat16"),
            "bf16": ("bfloat16", "bfloat16"),
        }.items():
            _, before, after, loss = _one_step(model_dir, p, c)
            keys = [k for k in before if "language_model.layers" in k and before[k].dim() == 2]
            changed = sum(int((before[k] != after[k]).sum()) for k in keys)
            total = sum(before[k].numel() for k in keys)
            out[f"changed_fraction_{name}"] = changed / total
            losses[name] = loss
        out["loss_fp32"] = losses["fp32"]
        out["loss_rel_diff_mixed_vs_fp32"] = abs(losses["mixed"] - losses["fp32"]) / abs(losses["fp32"])
        out["loss_rel_diff_bf16_vs_fp32"] = abs(losses["bf16"] - losses["fp32"]) / abs(losses["fp32"])
    print(json.dumps({"benchmark": "precision", "lr": 2e-6, **out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
