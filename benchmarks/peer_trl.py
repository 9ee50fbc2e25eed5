"""Seconds per GRPO step, ours against TRL's `GRPOTrainer`, on the same work, side by side in one run.

The work (both sides): the tiny Qwen2.5-VL of `mmsearch-r1 demo --quick` (`build_tiny_model`, seed 0, the world's
tokenizer corpus; random weights) and the questions of the small demo world (`build_world`, seed 0); 16 prompts x 4
rollouts per step, temperature 1, lr 1e-5 (constant), no KL (no reference model), fp32, one process, micro-batches
of 16 trajectories with gradient accumulation, one optimizer step per step (one PPO epoch, one mini-batch: neither
side runs a separate old-log-prob pass), grad clip 1.0. Each configuration runs 1 warm-up step + `--repeats`
timed steps per side; the figure is the median of the timed steps.

Configurations:
- `single20`, `single40`: one assistant turn of at most 20 / 40 new tokens (the random model almost never stops
  early, so both sides generate about that many).
- `multi`: three assistant turns, image search -> text search -> answer, on the world's local search indexes.
  The random model cannot choose to search, so on both sides each turn is forced the same way: a forced opening
  tag, `--sampled` tokens the model really samples, then the forced action and the stop token. Ours: protocol tags
  (`rollout.ForcedActionEngine`), our agent loop and tools. TRL: its tool-calling path (`tools=`, chat template
  with tool schemas, `<tool_call>` JSON parsed by TRL, tool turns appended and generation re-run), forced by a
  logits processor; its tools call the same search backends (the image tool searches with a fixed question
  image, as TRL tools receive only their arguments) and return text only: with images in a tool result and an
  image in the prompt, TRL 1.16 fails (TypeError in Qwen2.5-VL's `get_rope_index`: no image grid), so TRL's
  image search returns the result titles without the thumbnails. TRL therefore has less work here (no
  thumbnail image tokens, no vision forward for them) than we do.
- `multi_latency`: `multi` with every tool call taking 0.5 s more (a sleep in the tool, both sides).

Phases. Ours: `perf/time_rollout_s` (generation + tools + reward), `perf/time_logprob_s` (the separate old-log-prob
pass; 0 here), `perf/time_update_s` (forward, backward, optimizer step). TRL: `generate` (its `_generate`:
generation + tool calls), `score` (the rest of `_generate_and_score_completions`: rewards, advantages, tokenizing),
`update` (the rest of the optimizer step: forward, backward, step).

Needs TRL: `pip install -e '.[peer]'` (trl 1.16.0; torch 2.13.0 stays) in a venv of its own, e.g.
    python -m venv /tmp/peer && /tmp/peer/bin/pip install torch==2.13.0 -e '.[peer]'
(pin torch: without the pin pip may pull a CUDA build). Without TRL the script says so and exits 2.

Usage: python benchmarks/peer_trl.py [--configs single20,single40,multi,multi_latency] [--repeats 3]
Prints both sides per phase and ends with one JSON line (seconds per side and phase, and ours/TRL ratios
`speedup/<config>` = TRL s/step / our s/step).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PROMPTS, N, LR, MICRO = 16, 4, 1e-5, 16
TOOL_LATENCY_S = 0.5
CONFIGS = ("single20", "single40", "multi", "multi_latency")
ANSWER = "1820"
QUERY = "old tower stone"


# ------------------------------------------------------------------------------------------------ shared setup
def build_inputs(root: Path) -> tuple[Any, Path]:
    from mmsearch_r1.model.tiny import build_tiny_model
    from mmsearch_r1.world.build import build_world

    world = build_world(root / "world", seed=0, size="small")
    model = build_tiny_model(root / "model", seed=0, corpus=world.tokenizer_corpus)
    return world, model


def turn_plan(config: str) -> dict[str, Any]:
    if config.startswith("single"):
        return {"turns": 1, "max_new": int(config[len("single") :])}
    return {"turns": 3, "latency": TOOL_LATENCY_S if config == "multi_latency" else 0.0}


class SlowTool:
    """A tool that takes `delay` seconds more per call (the latency configuration)."""

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.name, self.counters = inner.name, inner.counters

    def __call__(self, arg, sample):
        time.sleep(self.delay)
        return self.inner(arg, sample)


# ------------------------------------------------------------------------------------------------ ours
def run_ours(
    config: str, world: Any, model: Path, root: Path, repeats: int, sampled: int
) -> dict[str, float]:
    import mmsearch_r1.tools as tools_mod
    from mmsearch_r1.rl.metrics import read_metrics
    from mmsearch_r1.rl.trainer import train
    from mmsearch_r1.rollout.engine import ForcedActionEngine
    from mmsearch_r1.world.demo import demo_config

    plan = turn_plan(config)
    over = [
        f"trainer.total_steps={1 + repeats}",
        f"trainer.prompts_per_step={PROMPTS}",
        f"trainer.mini_batch_prompts={PROMPTS}",
        f"trainer.micro_batch_size={MICRO}",
        "trainer.val_before_train=false",
        "trainer.val_every=0",
        "trainer.traces_per_step=0",
        f"rollout.n={N}",
        "rollout.temperature=1.0",
        f"optim.lr={LR}",
        "optim.schedule=constant",
        "optim.grad_clip=1.0",
        "grpo.kl_coef=0.0",
        "grpo.ppo_epochs=1",
        "model.param_dtype=float32",
        "model.compute_dtype=float32",
        "rollout.max_prompt_tokens=1000",
        "rollout.max_response_tokens=2000",
    ]
    if plan["turns"] == 1:
        over += ["protocol.max_turns=1", f"rollout.max_new_tokens_per_turn={plan['max_new']}"]
    else:
        over += ["protocol.max_turns=3", "rollout.max_new_tokens_per_turn=64"]
    cfg = demo_config(root / f"ours_{config}", world, model, quick=True, overrides=over)
    hook = None
    if plan["turns"] > 1:
        actions = [
            "<search><img></search>",
            f"<text_search>{QUERY}</text_search>",
            f"<answer>{ANSWER}</answer>",
        ]

        def hook(engine, renderer):
            def decide(req):
                return ("<reason>", "</reason>" + actions[min(req.turn_index, 2)])

            return ForcedActionEngine(
                engine, decide, renderer.encode, renderer.special.im_end, sampled_tokens=sampled
            )

    real_build = tools_mod.build_tools

    def build_tools(search_cfg, **kw):
        built = real_build(search_cfg, **kw)
        if plan.get("latency"):
            built = {k: SlowTool(t, plan["latency"]) for k, t in built.items()}
        return built

    tools_mod.build_tools = build_tools
    try:
        train(cfg, engine_hook=hook)
    finally:
        tools_mod.build_tools = real_build
    rows = read_metrics(Path(cfg.trainer.run_dir) / "metrics.jsonl")
    rows = [r for r in rows if r["step"] >= 2]  # step 1 is the warm-up
    med = {
        k: statistics.median(r[f"perf/time_{k}_s"] for r in rows)
        for k in ("rollout", "logprob", "update", "step")
    }
    med["response_tokens"] = statistics.median(r["rollout/response_tokens_mean"] for r in rows)
    med["turns"] = statistics.median(r["rollout/turns_mean"] for r in rows)
    med["seq_tokens"] = statistics.median(
        r["perf/tokens_per_s"] * r["perf/time_step_s"] / (PROMPTS * N) for r in rows
    )  # prompt + response tokens a trajectory, as trained
    return med


# ------------------------------------------------------------------------------------------------ TRL
def trl_processor(model: Path, with_tools: bool) -> Any:
    """Qwen2.5-VL processor over the tiny model's tokenizer and image processor (no video processor: that needs
    torchvision). With tools, TRL's Qwen3-VL chat template (same vision tokens, renders tool schemas and calls)."""
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageProcessorOnly(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
            self.video_processor = None

        def __call__(
            self, *a, **kw
        ):  # the PIL image processor answers numpy arrays; TRL's tool loop wants tensors
            import numpy as np
            import torch

            out = super().__call__(*a, **kw)
            for k in ("pixel_values", "image_grid_thw"):
                if isinstance(out.get(k), np.ndarray):
                    out[k] = torch.from_numpy(out[k])
            return out

    tok = AutoTokenizer.from_pretrained(model)
    if with_tools:
        from trl.chat_template_utils import qwen3_vl_chat_template

        tok.chat_template = qwen3_vl_chat_template
    image = AutoImageProcessor.from_pretrained(model, backend="pil")
    return ImageProcessorOnly(image_processor=image, tokenizer=tok, chat_template=tok.chat_template)


class Forcer:
    """Logits processor: per assistant turn, force `prefix`, let `sampled` tokens be sampled, force the turn's
    suffix and the stop token (the same shape as our ForcedActionEngine's turns)."""

    def __init__(self, tok: Any, sampled: int, first_turn_starts: int) -> None:
        self.tok, self.sampled, self.base = tok, sampled, first_turn_starts
        self.im_start = tok.convert_tokens_to_ids("<|im_start|>")
        self.stop = tok.convert_tokens_to_ids("<|im_end|>")
        self.prefix = tok.encode("<reason>", add_special_tokens=False)
        calls = [
            "<tool_call>\n" + json.dumps({"name": "image_search", "arguments": {}}) + "\n</tool_call>",
            "<tool_call>\n"
            + json.dumps({"name": "text_search", "arguments": {"query": QUERY}})
            + "\n</tool_call>",
            f"<answer>{ANSWER}</answer>",
        ]
        self.suffix = [tok.encode("</reason>" + c, add_special_tokens=False) + [self.stop] for c in calls]
        self.start, self.turns = None, None

    def __call__(self, input_ids, scores):
        import torch

        if self.start is None:
            self.start = input_ids.shape[1]
            starts = (input_ids == self.im_start).sum(1)
            self.turns = ((starts - self.base) // 2).clamp(0, 2).tolist()
        j = input_ids.shape[1] - self.start
        for row, turn in enumerate(self.turns):
            if j < len(self.prefix):
                forced = self.prefix[j]
            elif j < len(self.prefix) + self.sampled:
                continue
            else:
                suf = self.suffix[turn]
                forced = suf[min(j - len(self.prefix) - self.sampled, len(suf) - 1)]
            scores[row] = torch.full_like(scores[row], -float("inf"))
            scores[row, forced] = 0.0
        return scores


def run_trl(config: str, world: Any, model: Path, root: Path, repeats: int, sampled: int) -> dict[str, float]:
    import torch
    from datasets import Dataset
    from transformers import LogitsProcessorList, Qwen2_5_VLForConditionalGeneration, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from mmsearch_r1.config_io import load_config
    from mmsearch_r1.data.reader import read_many
    from mmsearch_r1.rollout.prompts import get_prompt_set
    from mmsearch_r1.tools import build_tools

    plan = turn_plan(config)
    multi = plan["turns"] > 1
    cfg = load_config(world.search_config)
    samples = read_many([world.train]).samples
    prompts = get_prompt_set(cfg.rollout.prompt_set)
    rows = []
    for s in samples:
        text = "".join(p for p in prompts.first_turn(s, cfg.protocol).content if isinstance(p, str))
        rows.append(
            {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
             "image": s.images[0].load()}
        )  # fmt: skip
    data = Dataset.from_list(rows)
    proc = trl_processor(model, with_tools=multi)
    policy = Qwen2_5_VLForConditionalGeneration.from_pretrained(model, dtype=torch.float32)

    tools = []
    if multi:
        ours = build_tools(cfg.search)
        probe = samples[0]
        delay = plan["latency"]

        def parts(
            result,
        ) -> str:  # TRL 1.16 fails on image parts in a tool result when the prompt has an image
            return "\n".join(p for p in result.parts if isinstance(p, str))

        def image_search() -> str:
            """Search the web for pages with pictures like the question's picture.

            Returns:
                Titles of the matching pages.
            """
            time.sleep(delay)
            return parts(ours["image_search"](None, probe))

        def text_search(query: str) -> str:
            """Search the web for text pages.

            Args:
                query: What to search for.

            Returns:
                Summaries of the matching pages.
            """
            time.sleep(delay)
            return parts(ours["text_search"](query, probe))

        tools = [image_search, text_search]
        starts = proc.apply_chat_template(
            [rows[0]["prompt"][0] | {"content": [{"type": "image", "image": rows[0]["image"]}, *rows[0]["prompt"][0]["content"][1:]]}],
            tools=tools, add_generation_prompt=True, tokenize=False,
        ).count("<|im_start|>")  # fmt: skip

    def reward(completions, **_):  # cheap and content-dependent (the score itself is not what is timed)
        return [float(len(str(c)) % 5) for c in completions]

    args = GRPOConfig(
        output_dir=str(root / f"trl_{config}"),
        per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=PROMPTS * N // MICRO,
        num_generations=N,
        max_completion_length=plan.get("max_new", 600),
        max_tool_calling_iterations=2 if multi else None,
        temperature=1.0,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=1.0,
        beta=0.0,
        num_iterations=1,
        bf16=False,
        fp16=False,
        use_cpu=True,
        max_steps=1 + repeats,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=reward,
        args=args,
        train_dataset=data,
        processing_class=proc,
        tools=tools or None,
    )
    if multi:
        real_generate = policy.generate

        def forced_generate(*a, **kw):
            kw["logits_processor"] = LogitsProcessorList([Forcer(proc.tokenizer, sampled, starts)])
            return real_generate(*a, **kw)

        policy.generate = forced_generate

    spent = {"generate": 0.0, "score": 0.0}
    real_gen, real_gas = trainer._generate, trainer._generate_and_score_completions

    def timed_generate(*a, **kw):
        t0 = time.perf_counter()
        try:
            return real_gen(*a, **kw)
        finally:
            spent["generate"] += time.perf_counter() - t0

    def timed_gas(*a, **kw):
        t0, g0 = time.perf_counter(), spent["generate"]
        try:
            return real_gas(*a, **kw)
        finally:
            spent["score"] += time.perf_counter() - t0 - (spent["generate"] - g0)

    trainer._generate, trainer._generate_and_score_completions = timed_generate, timed_gas
    steps: list[dict[str, float]] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *_a, **_k):
            spent.update(generate=0.0, score=0.0, t0=time.perf_counter())

        def on_step_end(self, *_a, **_k):
            total = time.perf_counter() - spent["t0"]
            gen, score = spent["generate"], spent["score"]
            steps.append({"generate": gen, "score": score, "update": total - gen - score, "step": total})

    trainer.add_callback(Clock())
    trainer.train()
    timed = steps[1:]
    med = {k: statistics.median(s[k] for s in timed) for k in ("generate", "score", "update", "step")}
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    seen = [0.0] + [float(h["num_tokens"]) for h in logs]
    med["seq_tokens"] = statistics.median(
        (b - a) / (PROMPTS * N) for a, b in zip(seen[1:-1], seen[2:], strict=True)
    )
    logs = logs[1:]
    if logs:
        med["completion_tokens"] = statistics.median(h["completions/mean_length"] for h in logs)
    calls = [h["tools/call_frequency"] for h in logs if "tools/call_frequency" in h]
    if calls:
        med["tool_calls"] = statistics.median(calls)
    return med


# ------------------------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}"
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per side (after one warm-up step)")
    ap.add_argument("--sampled", type=int, default=24, help="multi-turn: tokens sampled per forced turn")
    args = ap.parse_args()
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in CONFIGS]
    if bad or args.repeats < 1:
        ap.error(f"--configs: unknown {bad}" if bad else "--repeats must be >= 1")
    try:
        import trl  # noqa: F401
    except ImportError:
        print(
            "TRL is not installed: pip install -e '.[peer]' in a venv (see the module docstring)",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    logging.basicConfig(level=logging.WARNING)
    out: dict[str, Any] = {"load_before": open("/proc/loadavg").read().split()[:3], "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world, model = build_inputs(root)
        for c in configs:
            ours = run_ours(c, world, model, root, args.repeats, args.sampled)
            peer = run_trl(c, world, model, root, args.repeats, args.sampled)
            print(f"\n== {c}: median of {args.repeats} steps (s)")
            print(f"{'':10s} {'ours':>8s}   {'TRL':>8s}")
            print(f"{'rollout':10s} {ours['rollout']:8.3f}   {peer['generate'] + peer['score']:8.3f}"
                  f"   (TRL generate {peer['generate']:.3f} + score {peer['score']:.3f})")  # fmt: skip
            print(f"{'logprob':10s} {ours['logprob']:8.3f}   {'-':>8s}")
            print(f"{'update':10s} {ours['update']:8.3f}   {peer['update']:8.3f}")
            print(
                f"{'step':10s} {ours['step']:8.3f}   {peer['step']:8.3f}   TRL/ours {peer['step'] / ours['step']:.2f}x"
            )
            print(f"ours: {ours['turns']:.2f} turns, {ours['response_tokens']:.0f} response tokens, "
                  f"{ours['seq_tokens']:.0f} sequence tokens a trajectory; "
                  f"TRL: {peer.get('completion_tokens', float('nan')):.0f} completion tokens, "
                  f"{peer['seq_tokens']:.0f} sequence tokens"
                  + (f", {peer['tool_calls']:.2f} tool calls" if "tool_calls" in peer else ""))  # fmt: skip
            out[c] = {"ours": ours, "trl": peer}
            out[f"speedup/{c}"] = round(peer["step"] / ours["step"], 3)
    out["load_after"] = open("/proc/loadavg").read().split()[:3]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
