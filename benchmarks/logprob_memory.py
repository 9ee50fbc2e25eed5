"""Peak CPU memory of forward + backward token log-probs: chunked (`token_logprobs`) vs naive full logits.

Setup: one sequence of 4,096 tokens, vocabulary 151,936 (Qwen2.5's), hidden 896 (Qwen2.5-0.5B's), fp32, CPU.
Both hidden states and the LM-head weight require grad, and backward runs on sum(logp).

Method: each variant runs in its own fresh subprocess (so one variant's freed memory cannot hide the other's
peak). The child builds the inputs, records its resident set size (RSS, from /proc/self/statm) as the
baseline, runs forward + backward, then reads its peak RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`). The
figure compared is the peak above the baseline: the memory the log-prob computation itself needed (the
inputs, weight and torch itself are in the baseline; the weight's gradient, 0.54 GB at these sizes, is part of
every variant's figure). The children also return the log-prob sum and gradient norms so that the parent checks
both variants computed the same thing. Target: chunked peak < 1/4 of naive.

Usage: python benchmarks/logprob_memory.py [--tokens 4096] [--vocab 151936] [--hidden 896] [--chunk 1024]
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(args: argparse.Namespace) -> None:
    import torch

    from mmsearch_r1.rl.logprobs import logprobs_from_logits, token_logprobs

    torch.manual_seed(0)
    hidden = (torch.randn(1, args.tokens, args.hidden) * 0.5).requires_grad_(True)
    weight = (torch.randn(args.vocab, args.hidden) * 0.02).requires_grad_(True)
    targets = torch.randint(0, args.vocab, (1, args.tokens))
    base = _rss_bytes()
    t0 = time.perf_counter()
    if args.variant == "naive":
        logp = logprobs_from_logits(hidden @ weight.T, targets)
    else:
        logp, _ = token_logprobs(hidden, weight, targets, chunk_tokens=args.chunk)
    logp.sum().backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    out = {
        "variant": args.variant,
        "baseline_bytes": base,
        "peak_bytes": peak,
        "peak_above_baseline_bytes": peak - base,
        "seconds": seconds,
        "logp_sum": float(logp.sum()),
        "grad_hidden_norm": float(hidden.grad.norm()),
        "grad_weight_norm": float(weight.grad.norm()),
    }
    print(json.dumps(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=896)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--variant", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        _child(args)
        return 0

    gb = 1 / 2**30
    print(
        f"forward+backward log-probs: tokens={args.tokens} vocab={args.vocab} hidden={args.hidden} fp32 CPU, "
        f"chunk={args.chunk}; full logits alone = {args.tokens * args.vocab * 4 * gb:.2f} GiB"
    )
    results = {}
    for variant in ("chunked", "naive"):
        cmd = [sys.executable, __file__, "--variant", variant, "--tokens", str(args.tokens)]
        cmd += ["--vocab", str(args.vocab), "--hidden", str(args.hidden), "--chunk", str(args.chunk)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])

    print(f"{'variant':<10}{'baseline GiB':>14}{'peak GiB':>10}{'peak-base GiB':>15}{'seconds':>9}")
    for v, r in results.items():
        print(
            f"{v:<10}{r['baseline_bytes'] * gb:>14.2f}{r['peak_bytes'] * gb:>10.2f}"
            f"{r['peak_above_baseline_bytes'] * gb:>15.2f}{r['seconds']:>9.1f}"
        )
    c, n = results["chunked"], results["naive"]
    ratio = c["peak_above_baseline_bytes"] / n["peak_above_baseline_bytes"]
    same = all(
        abs(c[k] - n[k]) <= 1e-4 * max(1.0, abs(n[k]))
        for k in ("logp_sum", "grad_hidden_norm", "grad_weight_norm")
    )
    print(f"chunked / naive peak above baseline: {ratio:.3f} (target < 0.25); results agree: {same}")
    summary = {
        "tokens": args.tokens,
        "vocab": args.vocab,
        "hidden": args.hidden,
        "chunk_tokens": args.chunk,
        "naive_peak_gib": round(n["peak_above_baseline_bytes"] * gb, 3),
        "chunked_peak_gib": round(c["peak_above_baseline_bytes"] * gb, 3),
        "chunked_over_naive": round(ratio, 4),
        "naive_seconds": round(n["seconds"], 2),
        "chunked_seconds": round(c["seconds"], 2),
        "results_agree": same,
        "target_met": ratio < 0.25,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
