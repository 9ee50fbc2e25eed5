"""Images sized as configured (`data.min_pixels` / `data.max_pixels` reach the image processor) and training
prompts that cannot fit `rollout.max_prompt_tokens` filtered at load, named in RUN_DIR/data_report.json."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from tests.test_trainer import build_world, png, train_config

from mmsearch_r1.config import ProtocolConfig, RolloutConfig
from mmsearch_r1.model import load_processor
from mmsearch_r1.rollout.prompt_filter import filter_prompts
from mmsearch_r1.types import Answers, ImageData, Message, Sample

PIXELS_PER_TOKEN = 28 * 28


def _image_tokens(renderer, size=(4000, 3000)) -> int:
    img = Image.new("RGB", size, "orange")
    rendered = renderer.render([Message("user", [img, "What is this?"])])
    return sum(1 for t in rendered.input_ids if t == renderer.special.image_pad)


@pytest.mark.parametrize("max_tokens", [16, 64, 256])
def test_a_4000x3000_image_stays_within_max_pixels(tiny_model_dir, max_tokens):
    r = load_processor(
        tiny_model_dir, min_pixels=4 * PIXELS_PER_TOKEN, max_pixels=max_tokens * PIXELS_PER_TOKEN
    )
    n = _image_tokens(r)
    assert max_tokens // 2 < n <= max_tokens  # the budget decides the count (aspect ratio costs a little)


def test_min_pixels_enlarges_a_small_image_and_none_keeps_the_model_budget(tiny_model_dir):
    own = load_processor(tiny_model_dir)  # the tiny model's preprocessor_config: at most 112 x 112 pixels
    assert _image_tokens(own) <= 112 * 112 // PIXELS_PER_TOKEN
    big = load_processor(tiny_model_dir, min_pixels=100 * PIXELS_PER_TOKEN, max_pixels=400 * PIXELS_PER_TOKEN)
    assert _image_tokens(big, (28, 28)) >= 100 > _image_tokens(own, (28, 28))
    with pytest.raises(ValueError, match="min_pixels <= max_pixels"):
        load_processor(tiny_model_dir, min_pixels=10_000, max_pixels=100)


def test_filter_names_prompts_over_the_token_budget(tiny_model_dir):
    r = load_processor(tiny_model_dir, min_pixels=4 * PIXELS_PER_TOKEN, max_pixels=256 * PIXELS_PER_TOKEN)
    small = Image.new("RGB", (56, 56), "red")
    web = Image.new("RGB", (4000, 3000), "blue")
    samples = [
        Sample("ok", "Which city?", [small], Answers("Paris")),
        Sample("huge", "Which city?", [web], Answers("Rome")),
        Sample("many", "Which city?", [small] * 3, Answers("Oslo")),
    ]
    kept, report = filter_prompts(
        samples, r, ProtocolConfig(), RolloutConfig(max_prompt_tokens=700, max_images=2)
    )
    assert [s.id for s in kept] == ["ok"]
    assert report["n_read"] == 3 and report["n_kept"] == 1 and report["n_filtered"] == 2
    reasons = {f["id"]: f["reason"] for f in report["filtered"]}
    assert "more than max_prompt_tokens=700" in reasons["huge"]
    assert "3 images, more than max_images=2" in reasons["many"]


def test_trainer_writes_the_data_report(tiny_model_dir, tmp_path):
    from mmsearch_r1.data.writer import write_samples
    from mmsearch_r1.rl.trainer import train

    world = build_world(tmp_path / "world")
    web = png(Image.new("RGB", (4000, 3000), "blue"))
    from mmsearch_r1.data.reader import read_many

    samples = read_many([world["data.train_files"].strip("[]")]).samples
    samples.append(Sample("web", "When was it built?", [ImageData(bytes=web)], Answers("1820")))
    write_samples(samples, tmp_path / "train.parquet")
    world["data.train_files"] = f"[{tmp_path / 'train.parquet'}]"
    cfg = train_config(
        tiny_model_dir,
        world,
        tmp_path / "run",
        **{
            "trainer.total_steps": 0,
            "data.max_pixels": 1024 * PIXELS_PER_TOKEN,
            "rollout.max_prompt_tokens": 600,
        },
    )
    train(cfg)
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["n_read"] == 5 and report["n_kept"] == 4
    assert report["filtered"][0]["id"] == "web" and "max_prompt_tokens=600" in report["filtered"][0]["reason"]
