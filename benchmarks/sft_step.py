"""Time of one SFT optimizer step on the demo's world and model: what the log-prob row skip and length-sorted
micro-batches buy, measured side by side.

Setup: the demo's default world (`build_world`, seed 0) and tiny model (`demo_model_sizes`), its SFT
conversations tokenized as `run_sft` does (max length 512), 8 conversations a step (the demo's `sft.batch_size`),
AdamW with gradient clipping, fp32 on the CPU. Variants, each a full step (forward, backward, clip, update):

- `all_rows_mb8`: the log-probs of every response position projected onto the vocabulary (the tool output,
  image and padding positions included, as before the row skip), one micro-batch of 8;
- `skip_mb8`: `token_logprobs` as shipped (ignored positions are left out before the projection), one
  micro-batch of 8;
- `skip_sorted_mb4`: as shipped in the demo: the step's conversations sorted by length, two micro-batches of 4.

Every variant sees the same sequence of steps (the same picks of conversations); the variants are interleaved
in rounds so that the machine's load drifts over all of them alike. Reported: the median step time per variant,
and the ratios to `all_rows_mb8`. A check first confirms that the three variants give the same loss and gradient
on one step (they compute the same thing).

Usage: python benchmarks/sft_step.py [--steps 20] [--rounds 3] [--threads 2]. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("all_rows_mb8", "skip_mb8", "skip_sorted_mb4")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    import mmsearch_r1.rl.batch as B
    from mmsearch_r1.model import load_model, load_processor
    from mmsearch_r1.model.tiny import build_tiny_model
    from mmsearch_r1.rl import logprobs as LP
    from mmsearch_r1.rl.batch import PolicyForward
    from mmsearch_r1.rl.sft import collate, masked_nll_sum
    from mmsearch_r1.rl.sft_data import read_conversations, tokenize_conversation
    from mmsearch_r1.world.build import build_world
    from mmsearch_r1.world.demo import demo_model_sizes

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="sft_step_"))
    world = build_world(tmp / "world", seed=0)
    model_dir = build_tiny_model(
        tmp / "model", seed=0, corpus=world.tokenizer_corpus, sizes=demo_model_sizes()
    )
    renderer = load_processor(model_dir)
    data = [tokenize_conversation(c, renderer, 512) for c in read_conversations([world.sft_conversations])]
    data = [d for d in data if d is not None]
    rng = random.Random(0)
    picks = [rng.sample(range(len(data)), 8) for _ in range(args.steps + 2)]

    shipped = LP.token_logprobs

    def all_rows(hidden, weight, targets, chunk_tokens=1024, with_entropy=False, temperature=1.0):
        b, t, h = hidden.shape
        logp, ent = LP._ChunkedLogProbs.apply(
            hidden.reshape(b * t, h) / temperature, weight, targets.reshape(-1), chunk_tokens, with_entropy
        )
        return logp.reshape(b, t), (ent.reshape(b, t) if with_entropy else None)

    def make():
        torch.manual_seed(0)
        model = load_model(model_dir).train()
        policy = PolicyForward(model, 4096)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        return policy, opt

    def step(variant: str, policy, opt, pick) -> float:
        B.token_logprobs = all_rows if variant == "all_rows_mb8" else shipped
        items = [data[i] for i in pick]
        mb = 4 if variant == "skip_sorted_mb4" else 8
        if variant == "skip_sorted_mb4":
            items = sorted(items, key=lambda it: len(it.input_ids))
        n_tokens = sum(sum(it.loss_mask) for it in items)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for k in range(0, len(items), mb):
            nll, _ = masked_nll_sum(policy, collate(items[k : k + mb], renderer, "cpu"))
            (nll / n_tokens).backward()
            total += float(nll.detach())
        torch.nn.utils.clip_grad_norm_(list(policy.parameters()), 1.0)
        return total / n_tokens

    # -- the variants compute the same loss and gradient ------------------------------------------------------
    losses, grads = {}, {}
    for v in VARIANTS:
        policy, opt = make()
        opt.step = lambda: None  # gradient only
        losses[v] = step(v, policy, opt, picks[0])
        grads[v] = torch.cat([p.grad.reshape(-1) for p in policy.parameters()])
    for v in VARIANTS[1:]:
        if abs(losses[v] - losses[VARIANTS[0]]) > 1e-4 or not torch.allclose(
            grads[v], grads[VARIANTS[0]], atol=1e-5, rtol=1e-3
        ):
            raise SystemExit(f"variant {v} computes another loss or gradient than {VARIANTS[0]}")
    print(f"same loss ({losses[VARIANTS[0]]:.4f}) and gradient in every variant; timing {args.rounds} rounds")

    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for v in VARIANTS:
            policy, opt = make()
            for pick in picks[:2]:  # warm-up
                step(v, policy, opt, pick)
                opt.step()
            for pick in picks[2:]:
                t0 = time.perf_counter()
                step(v, policy, opt, pick)
                opt.step()
                times[v].append(time.perf_counter() - t0)
        print(
            f"round {r + 1}: "
            + ", ".join(f"{v} {statistics.median(times[v]) * 1e3:.0f} ms" for v in VARIANTS)
        )
    med = {v: statistics.median(times[v]) * 1e3 for v in VARIANTS}
    base = med["all_rows_mb8"]
    for v in VARIANTS:
        print(f"{v:>16}: median {med[v]:.1f} ms/step  ({base / med[v]:.2f}x vs all_rows_mb8)")
    out = {f"{v}_ms": round(med[v], 2) for v in VARIANTS}
    out |= {f"speedup_{v}": round(base / med[v], 3) for v in VARIANTS[1:]}
    out |= {"threads": args.threads, "steps": args.steps, "rounds": args.rounds}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
