"""The vLLM engine on one NVIDIA GPU, in two parts (run both with `benchmarks/gpu_check.sh`, under 8 minutes):

`engine OUT_JSON`: the tiny Qwen2.5-VL (built here) served by vLLM in fp32. Agent-loop rollouts whose prompts
carry the question image and whose forced image searches return thumbnails; the trainer's own forward
(`PolicyForward` on `collate`d trajectories) recomputes every mask-1 log-prob and the largest gap is reported
(target < 1e-3); greedy tokens of vLLM and HF on the same requests compared; the weights perturbed on the HF
side and synced with `load_weights`, then the gap measured again on fresh rollouts (the sync check); sleep mode
(memory freed while asleep, generation works after waking); generated tokens/s of both engines on the same 32
requests.

`train OUT_JSON`: 2 GRPO steps with `rollout.engine=vllm` and `model.dtype=bfloat16` on the same model and a
small local search world: step times, `rollout/logprob_diff_max` per step (bf16, so about 1e-2 is expected),
peak memory of the trainer's allocations.

Each part runs in its own process (one vLLM instance per process). The shell script prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _samples(n: int) -> list[Any]:
    from rollout import png

    from mmsearch_r1.types import Answers, Sample

    colors = ["red", "green", "blue", "yellow", "purple", "orange", "gray", "white"]
    return [
        Sample(
            f"p{i}", f"What is object {i}?", [png(Image.new("RGB", (56, 56), colors[i % 8]))], Answers("x")
        )
        for i in range(n)
    ]


def _rollouts(engine: Any, renderer: Any, seed: int) -> list[Any]:
    from mmsearch_r1.config import ProtocolConfig, RolloutConfig
    from mmsearch_r1.rollout.engine import ForcedActionEngine, SamplingParams
    from mmsearch_r1.rollout.loop import run_rollouts
    from mmsearch_r1.rollout.testing import FakeTool

    thumbs = [Image.new("RGB", (56, 56), "black"), "Title A\n", Image.new("RGB", (56, 56), "white"), "B\n"]
    tools = {"image_search": FakeTool(thumbs), "text_search": FakeTool(["Summary: the object is x.\n"])}
    actions = ["<search><img></search>", "<text_search>object</text_search>", "<answer>x</answer>"]
    forced = ForcedActionEngine(
        engine,
        lambda r: ("<reason>", "</reason>" + actions[min(r.turn_index, 2)]),
        renderer.encode,
        renderer.special.im_end,
        sampled_tokens=12,
    )
    cfg = RolloutConfig(max_new_tokens_per_turn=64, max_response_tokens=1500, max_prompt_tokens=1500)
    return run_rollouts(
        _samples(8), engine=forced, renderer=renderer, tools=tools, protocol=ProtocolConfig(), rollout=cfg,
        params=SamplingParams(1.0, seed=seed), n=2,
    )  # fmt: skip


def _gap(model: Any, renderer: Any, trajs: list[Any]) -> float:
    from mmsearch_r1.rl.batch import PolicyForward, collate

    batch = collate(trajs, renderer, "cuda")
    with torch.no_grad():
        logp, _ = PolicyForward(model, 256, 1.0)(batch)
    return float(((logp - batch["engine_logp"]).abs() * batch["mask"]).max())


def engine_part(out: Path) -> None:
    from rollout import tokens_per_s

    from mmsearch_r1.model import load_model, load_processor
    from mmsearch_r1.model.tiny import build_tiny_model
    from mmsearch_r1.rl import distributed as D
    from mmsearch_r1.rl.batch import PolicyForward
    from mmsearch_r1.rollout.engine import GenerationRequest, SamplingParams
    from mmsearch_r1.rollout.hf_engine import HFEngine
    from mmsearch_r1.rollout.vllm_engine import VLLMEngine
    from mmsearch_r1.types import Message

    path = build_tiny_model(Path(tempfile.mkdtemp(prefix="gpu_check_")) / "tiny", seed=0)
    renderer = load_processor(path)
    model = load_model(path, "float32", "cuda")
    t = time.perf_counter()
    engine = VLLMEngine(str(path), renderer, dtype="float32", max_model_len=4096, gpu_memory_utilization=0.3)
    res: dict[str, Any] = {"vllm_start_s": round(time.perf_counter() - t, 1)}
    res["logprob_gap_fp32_images"] = _gap(model, renderer, _rollouts(engine, renderer, 1))
    img = Image.new("RGB", (56, 56), "red")
    reqs = []
    for i in range(4):
        r = renderer.render([Message("user", [img, f"What is object {i}?"])])
        reqs.append(GenerationRequest(r.input_ids, 24, images=r.images, pixel_values=r.pixel_values,
                                      image_grid_thw=r.image_grid_thw, key=f"g{i}"))  # fmt: skip
    hf = HFEngine(model, renderer)
    greedy = SamplingParams(greedy=True)
    res["greedy_tokens_equal"] = [o.token_ids for o in engine.generate(reqs, greedy)] == [
        o.token_ids for o in hf.generate(reqs, greedy)
    ]
    with torch.no_grad():  # a different policy, synced one tensor at a time
        g = torch.Generator(device="cuda").manual_seed(0)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, device="cuda") * 0.01)
    res["synced_tensors"] = engine.load_weights(D.iter_full_params(PolicyForward(model), D.DistInfo()))
    res["logprob_gap_fp32_after_sync"] = _gap(model, renderer, _rollouts(engine, renderer, 2))
    free0 = torch.cuda.mem_get_info()[0]
    engine.sleep()
    res["sleep_freed_gib"] = round((torch.cuda.mem_get_info()[0] - free0) / 2**30, 2)
    engine.wake_up()
    res["generates_after_wake"] = len(engine.generate(reqs[:1], greedy)[0].token_ids) > 0
    res["gen_tokens_per_s"] = {k: round(v, 1) for k, v in tokens_per_s(engine, hf, renderer, 0).items()}
    engine.close()
    out.write_text(json.dumps(res))


def train_part(out: Path) -> None:
    from rollout import build_indexes

    from mmsearch_r1.config_io import load_config
    from mmsearch_r1.data.writer import write_samples
    from mmsearch_r1.model.tiny import build_tiny_model
    from mmsearch_r1.rl.metrics import read_metrics
    from mmsearch_r1.rl.trainer import train

    root = Path(tempfile.mkdtemp(prefix="gpu_check_train_"))
    path = build_tiny_model(root / "tiny", seed=0)
    build_indexes(root)
    write_samples(_samples(8), root / "train.parquet")
    overrides = {
        "model.path": path, "model.dtype": "bfloat16", "trainer.run_dir": root / "run",
        "trainer.total_steps": 2, "trainer.prompts_per_step": 8, "trainer.mini_batch_prompts": 8,
        "trainer.micro_batch_size": 8, "trainer.val_before_train": False, "trainer.val_every": 0,
        "trainer.save_every": 0, "rollout.engine": "vllm", "rollout.n": 4, "rollout.vllm_gpu_memory_utilization": 0.3,
        "rollout.max_new_tokens_per_turn": 64, "rollout.max_response_tokens": 1000, "rollout.max_prompt_tokens": 1500,
        "grpo.kl_coef": 0.0, "data.train_files": f"[{root / 'train.parquet'}]",
        "search.text_backend": f"{{type: local, index_dir: {root / 'text'}}}",
        "search.image_backend": f"{{type: local, index_dir: {root / 'image'}}}",
    }  # fmt: skip
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    result = train(load_config(None, [f"{k}={v}" for k, v in overrides.items()]))
    rows = read_metrics(result.metrics_path)
    out.write_text(
        json.dumps(
            {
                "grpo_wall_s": round(time.perf_counter() - t, 1),
                "grpo_step_s": [round(r["perf/time_step_s"], 2) for r in rows],
                "grpo_logprob_diff_max_bf16": [r["rollout/logprob_diff_max"] for r in rows],
                "trainer_peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            }
        )
    )


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("gpu_check needs CUDA")
    {"engine": engine_part, "train": train_part}[sys.argv[1]](Path(sys.argv[2]))
