"""`mmsearch-r1 infer` end to end: the spine's tiny model, the local search backends, JSON out."""

from __future__ import annotations

import json

import pytest
import yaml
from PIL import Image

from mmsearch_r1.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mmsearch_r1.model import build_tiny_model
    from mmsearch_r1.search.local_image import build_image_index
    from mmsearch_r1.search.local_text import build_text_index

    root = tmp_path_factory.mktemp("infer")
    model = build_tiny_model(root / "model", seed=0)
    (root / "pages.jsonl").write_text(
        json.dumps({"url": "http://local/a", "title": "Red square", "text": "The red square is a sign."})
        + "\n"
    )
    build_text_index(root / "pages.jsonl", root / "text")
    (root / "imgs").mkdir()
    Image.new("RGB", (64, 64), "red").save(root / "imgs" / "a.png")
    (root / "imgs" / "rows.jsonl").write_text(
        json.dumps({"image": "a.png", "title": "Red square", "url": "http://local/a"}) + "\n"
    )
    build_image_index(root / "imgs" / "rows.jsonl", root / "image")
    search = {
        "top_k": 1,
        "text_backend": {"type": "local", "index_dir": str(root / "text")},
        "image_backend": {"type": "local", "index_dir": str(root / "image")},
    }
    (root / "search.yaml").write_text(yaml.safe_dump(search))
    Image.new("RGB", (56, 56), "red").save(root / "q.png")
    return root, model


def test_infer_prints_and_writes_json(world, capsys):
    root, model = world
    out = root / "out.json"
    argv = ["infer", "--model", str(model), "--image", str(root / "q.png"), "--question", "What is this?"]
    argv += ["--search", str(root / "search.yaml"), "--out", str(out), "--max-new-tokens", "12"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["question"] == "What is this?" and data["finish_reason"] in (
        "answer",
        "max_turns",
        "tool_limit",
    )
    assert 1 <= len(data["turns"]) <= 3 and data["images"][0]["size"] == [56, 56]
    assert "=== assistant turn 1" in printed and f"finish: {data['finish_reason']}" in printed
    assert "<|im_start|>user" in data["prompt"] and "Question: What is this?" in data["prompt"]
    for turn in data["turns"][:-1]:  # every non-final turn was refused with a reason shown to the model
        assert turn["refusal"] or turn["tool"]


def test_infer_bad_inputs(world, capsys):
    root, model = world
    base = ["infer", "--model", str(model), "--question", "q"]
    assert main([*base, "--image", str(root / "missing.png")]) == 1
    assert "missing.png" in capsys.readouterr().err
    (root / "bad.yaml").write_text("top_k: 1\nbogus: 2\n")
    assert main([*base, "--image", str(root / "q.png"), "--search", str(root / "bad.yaml")]) == 1
    assert "bogus" in capsys.readouterr().err
