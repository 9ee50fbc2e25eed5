"""The GRPO trainer end to end on the tiny Qwen2.5-VL with a local search world built here.

- a 2-step run with real local search tools changes every trainable parameter and writes every documented
  metric key, traces, checkpoints and an HF export;
- a learning test: a one-token answer task whose right answers the random model samples now and then; GRPO
  raises the mean reward clearly (the curve is printed with -s);
- bad configs are refused with the key named.

`build_world` / `train_config` / `forced_hook` are shared with the checkpoint and distributed tests.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from mmsearch_r1.config_io import load_config
from mmsearch_r1.rl.metrics import read_metrics
from mmsearch_r1.types import Answers, ImageData, Sample

PAGES = [
    ("http://local/heron", "Grey heron", "The grey heron is a wading bird. It lives near lakes and rivers."),
    ("http://local/tower", "Old tower", "The old tower was built in 1820 by the river. It is made of stone."),
    ("http://local/mill", "Red mill", "The red mill grinds wheat. It was painted red in 1901."),
    ("http://local/boat", "Blue boat", "The blue boat carries people across the lake every morning."),
]
COLORS = ["red", "green", "blue", "orange"]


def drawing(i: int, shift: int = 0) -> Image.Image:
    img = Image.new("RGB", (56, 56), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([5 + shift, 5 + 4 * i, 30 + shift, 25 + 4 * i], fill=COLORS[i % 4])
    d.ellipse([28, 28 - shift, 50, 50 - shift], fill=COLORS[(i + 1) % 4])
    return img


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def build_world(root: Path, n_questions: int = 4) -> dict[str, str]:
    """Text corpus + BM25 index, image index, train/val parquet. Returns config overrides pointing at them."""
    from mmsearch_r1.data.writer import write_samples
    from mmsearch_r1.search.local_image import build_image_index
    from mmsearch_r1.search.local_text import build_text_index

    root.mkdir(parents=True, exist_ok=True)
    with open(root / "pages.jsonl", "w") as f:
        for url, title, text in PAGES:
            f.write(json.dumps({"url": url, "title": title, "text": text}) + "\n")
    build_text_index(root / "pages.jsonl", root / "text")
    (root / "imgs").mkdir(exist_ok=True)
    with open(root / "imgs" / "images.jsonl", "w") as f:
        for i, (url, title, _) in enumerate(PAGES):
            drawing(i).save(root / "imgs" / f"{i}.png")
            f.write(json.dumps({"image": f"{i}.png", "title": title, "url": url}) + "\n")
    build_image_index(root / "imgs" / "images.jsonl", root / "image")
    samples = [
        Sample(
            f"q{i}",
            f"When was the thing in picture {i} built?",
            [ImageData(bytes=png(drawing(i, shift=2)))],
            Answers("1820"),
            data_source=["world_head", "world_tail"][i % 2],
        )
        for i in range(n_questions)
    ]
    write_samples(samples, root / "train.parquet")
    write_samples(samples[:2], root / "val.parquet")
    return {
        "data.train_files": f"[{root / 'train.parquet'}]",
        "data.val_files": f"[{root / 'val.parquet'}]",
        "search.top_k": "2",
        "search.text_backend": "{type: local, index_dir: %s}" % (root / "text"),
        "search.image_backend": "{type: local, index_dir: %s}" % (root / "image"),
    }


def train_config(model_dir: Path, world: dict[str, str], run_dir: Path, **extra: object):
    """A small, fast config: 2 prompts x 2 rollouts per step, short budgets, a big lr."""
    base = {
        "model.path": str(model_dir),
        "trainer.run_dir": str(run_dir),
        "trainer.total_steps": 2,
        "trainer.prompts_per_step": 2,
        "trainer.mini_batch_prompts": 2,
        "trainer.micro_batch_size": 2,
        "trainer.val_every": 0,
        "trainer.val_before_train": False,
        "trainer.save_every": 1,
        "trainer.keep_last": 2,
        "trainer.traces_per_step": 2,
        "rollout.n": 2,
        "rollout.max_new_tokens_per_turn": 48,
        "rollout.max_response_tokens": 1000,
        "rollout.max_prompt_tokens": 2000,
        "rollout.max_images": 4,
        "rollout.max_batch_size": 16,
        "rollout.schedule": "round_sync",
        "rollout.tool_workers": 2,
        "grpo.kl_coef": 0.01,
        "grpo.logprob_chunk_tokens": 64,
        "optim.lr": 1e-2,
        "optim.grad_clip": 1.0,
        **world,
        **extra,
    }
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


def forced_hook(sampled_tokens: int = 4):
    """Group 0 goes image search -> text search -> answer (tags forced, the words between them sampled)."""
    from mmsearch_r1.rollout.engine import ForcedActionEngine

    actions = [
        "<search><img></search>",
        "<text_search>old tower stone</text_search>",
        "<answer>1820</answer>",
    ]

    def decide(req):
        if not req.key.endswith("#0"):
            return None
        return ("<reason>", "</reason>" + actions[min(req.turn_index, 2)])

    def hook(engine, renderer):
        return ForcedActionEngine(
            engine, decide, renderer.encode, renderer.special.im_end, sampled_tokens=sampled_tokens
        )

    return hook


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


REQUIRED_KEYS = [
    "reward/mean", "reward/acc", "reward/format", "reward/penalty",
    "search/ratio_any", "search/ratio_image_only", "search/ratio_text_only", "search/ratio_both",
    "search/per_traj", "tool/error_ratio_image", "tool/error_ratio_text", "rollout/turns_mean",
    "rollout/assistant_tokens_mean", "rollout/finish_answer", "rollout/finish_max_turns",
    "actor/pg_loss", "actor/clip_frac_low", "actor/clip_frac_high", "actor/kl", "actor/entropy",
    "actor/grad_norm", "actor/lr", "perf/tokens_per_s", "perf/time_rollout_s", "perf/time_logprob_s",
    "perf/time_update_s", "perf/time_step_s",
]  # fmt: skip


def test_two_steps_change_every_parameter_and_write_metrics(tiny_model_dir, world, tmp_path):
    from mmsearch_r1.model import load_model, load_processor
    from mmsearch_r1.rl.trainer import train

    before = {k: v.clone() for k, v in load_model(tiny_model_dir).state_dict().items()}
    cfg = train_config(
        tiny_model_dir, world, tmp_path / "run", **{"trainer.val_every": 2, "trainer.val_before_train": True}
    )
    result = train(cfg, engine_hook=forced_hook())
    rows = read_metrics(result.metrics_path)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert "val/world_head/acc" in rows[0] and "val/world_tail/search_ratio" in rows[2]
    for row in rows[1:]:
        missing = [k for k in REQUIRED_KEYS if k not in row]
        assert not missing, missing
        assert any(k.startswith("acc/world_") for k in row)  # accuracy per data source
        assert row["search/ratio_both"] > 0 and row["rollout/finish_answer"] > 0  # group 0 searched twice
        assert row["rollout/logprob_diff_max"] < 1e-4  # trainer's forward reproduces the engine's log-probs
        assert row["rollout/kv_hits"] >= 2 and row["rollout/kv_prefill_tokens_saved"] > 0  # group 0: 3 turns
        assert row["actor/grad_norm"] > 0
    # every trainable parameter moved; the export is a loadable HF directory with the processor files
    after = load_model(result.final_dir).state_dict()
    unchanged = [k for k, v in before.items() if torch.equal(v, after[k])]
    assert not unchanged, unchanged
    load_processor(result.final_dir)
    traces = [json.loads(x) for x in (result.run_dir / "traces" / "step_0002.jsonl").read_text().splitlines()]
    assert len(traces) == 2 and "reward" in traces[0] and traces[0]["turns"]
    ckpts = sorted(p.name for p in (result.run_dir / "checkpoints").iterdir())
    assert ckpts == ["step_000001", "step_000002"]


def test_bad_config_names_the_key(tmp_path):
    from mmsearch_r1.rl.trainer import check_train_config

    cfg = load_config(None, ["trainer.prompts_per_step=3", "trainer.mini_batch_prompts=3"])
    with pytest.raises(ValueError, match="model.path") as e:
        check_train_config(cfg, world_size=2)
    assert "data.train_files" in str(e.value) and "divisible by the number of processes" in str(e.value)


# ------------------------------------------------------------------------------------------------ learning
def _choose_golds(model_dir: Path, samples: list[Sample], prefix: str) -> list[tuple[str, float]]:
    """For each question, a word the untrained model writes after `prefix` with probability 2-40%."""
    from mmsearch_r1.config import ProtocolConfig
    from mmsearch_r1.model import compute_position_ids, load_model, load_processor
    from mmsearch_r1.reward import normalize_answer
    from mmsearch_r1.rollout.prompts import get_prompt_set
    from mmsearch_r1.rollout.rendering import RendererAdapter

    model, renderer = load_model(model_dir), load_processor(model_dir)
    prompts = get_prompt_set("default")
    out = []
    for s in samples:
        r = RendererAdapter(renderer).render_first_turn(prompts.first_turn(s, ProtocolConfig(max_turns=1)))
        ids = torch.tensor([r.input_ids + renderer.encode(prefix)])
        pos = compute_position_ids(model, ids, r.image_grid_thw, torch.ones_like(ids))
        with torch.no_grad():
            logits = model(input_ids=ids, position_ids=pos, pixel_values=r.pixel_values,
                           image_grid_thw=r.image_grid_thw).logits[0, -1]  # fmt: skip
        probs = torch.softmax(logits.float(), -1)
        best = None
        for tok in torch.argsort(probs, descending=True)[:200].tolist():
            text = renderer.decode([tok]).strip()
            p = float(probs[tok])
            if (
                len(text) >= 2
                and text.isalpha()
                and normalize_answer(text) == text.lower()
                and 0.02 <= p <= 0.4
            ):
                if best is None or abs(p - 0.1) < abs(best[1] - 0.1):
                    best = (text, p)
        assert best is not None, f"no answer word with a moderate probability for {s.id}"
        out.append(best)
    return out


def test_grpo_raises_reward_on_a_one_token_answer_task(tmp_path, capsys):
    """Each question's right answer is a word the random model samples 2-40% of the time after
    `<reason>x</reason><answer>` (forced); GRPO must make it clearly more likely."""
    from mmsearch_r1.data.writer import write_samples
    from mmsearch_r1.model.tiny import TinySizes, build_tiny_model
    from mmsearch_r1.rl.trainer import train
    from mmsearch_r1.rollout.engine import ForcedActionEngine

    model_dir = build_tiny_model(tmp_path / "m", seed=3, sizes=TinySizes(init_range=0.3))
    world = build_world(tmp_path / "w")
    samples = [
        Sample(
            f"q{i}", f"Which word goes with picture {i}?", [ImageData(bytes=png(drawing(i, 1)))], Answers("x")
        )
        for i in range(4)
    ]
    prefix = "<reason>x</reason><answer>"
    golds = _choose_golds(model_dir, samples, prefix)
    for s, (g, _) in zip(samples, golds, strict=True):
        s.answers = Answers(g)
    write_samples(samples, tmp_path / "task.parquet")
    world["data.train_files"] = f"[{tmp_path / 'task.parquet'}]"
    cfg = train_config(
        model_dir, world, tmp_path / "run",
        **{"trainer.total_steps": 6, "trainer.prompts_per_step": 4, "trainer.mini_batch_prompts": 4,
           "trainer.micro_batch_size": 16, "trainer.save_every": 0, "trainer.traces_per_step": 0,
           "rollout.n": 8, "protocol.max_turns": 1, "grpo.kl_coef": 0.0, "optim.lr": 5e-4,
           "data.val_files": "[]"},
    )  # fmt: skip

    def hook(engine, renderer):
        return ForcedActionEngine(
            engine,
            lambda req: (prefix, "</answer>"),
            renderer.encode,
            renderer.special.im_end,
            sampled_tokens=1,
        )

    result = train(cfg, engine_hook=hook)
    curve = [r["reward/mean"] for r in read_metrics(result.metrics_path)]
    with capsys.disabled():
        print("\ngolds", golds, "\nreward/mean by step", [round(c, 3) for c in curve])
    start, end = curve[0], sum(curve[-2:]) / 2
    assert end > start + 0.3 and end > 0.6, curve


def test_train_cli_one_step(tiny_model_dir, world, tmp_path):
    """`mmsearch-r1 train` as users run it (a subprocess, free sampling, no hook): one step, files written."""
    import subprocess
    import sys

    overrides = {
        "model.path": tiny_model_dir, "trainer.run_dir": tmp_path / "run", "trainer.total_steps": 1,
        "trainer.prompts_per_step": 2, "trainer.mini_batch_prompts": 1, "trainer.micro_batch_size": 2,
        "trainer.val_before_train": False, "rollout.n": 2, "rollout.max_new_tokens_per_turn": 16,
        "rollout.max_prompt_tokens": 2000, "protocol.max_turns": 1, "grpo.kl_coef": 0.0, **world,
    }  # fmt: skip
    cmd = [sys.executable, "-m", "mmsearch_r1.cli", "train", "--no-progress"]
    cmd += [f"{k}={v}" for k, v in overrides.items()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "final policy:" in proc.stdout
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1] and rows[0]["rollout/n_trajectories"] == 4
    assert (tmp_path / "run" / "final" / "config.json").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()
