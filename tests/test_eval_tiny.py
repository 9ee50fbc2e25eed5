"""`mmsearch-r1 eval` on the tiny Qwen2.5-VL: a parquet with two data sources, the real local search tools, every
sample written, and the per-source summary checked against counts the test computes itself from the files."""

from __future__ import annotations

import io
import json
import string
from collections import Counter, defaultdict

import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from mmsearch_r1.cli import main
from mmsearch_r1.data.writer import write_samples
from mmsearch_r1.types import Answers, ImageData, Sample

PAGES = [
    ("http://local/heron", "Grey heron", "The grey heron is a wading bird. It lives near lakes and rivers."),
    ("http://local/tower", "Old tower", "The old tower was built in 1820 by the river. It is made of stone."),
    ("http://local/mill", "Red mill", "The red mill grinds wheat. It was painted red in 1901."),
]
COLORS = ["red", "green", "blue"]
ROWS = [  # (id, data source, category, question, gold)
    ("h1", "birds", "search_free", "What bird is this?", "grey heron"),
    ("h2", "birds", "search_required", "Where does this bird live?", "near lakes"),
    ("t1", "buildings", "search_required", "When was this tower built?", "1820"),
    ("t2", "buildings", "search_free", "What is this building?", "old tower"),
    ("m1", "buildings", "search_required", "When was the mill painted red?", "1901"),
]


def drawing(i: int, shift: int = 0) -> Image.Image:
    img = Image.new("RGB", (56, 56), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([4 + shift, 4 + 6 * i, 30 + shift, 30 + 6 * i], fill=COLORS[i])
    d.ellipse([28, 28 - shift, 52, 52 - shift], fill=COLORS[(i + 1) % 3])
    return img


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mmsearch_r1.search.local_image import build_image_index
    from mmsearch_r1.search.local_text import build_text_index

    root = tmp_path_factory.mktemp("eval_world")
    with open(root / "pages.jsonl", "w") as f:
        for url, title, text in PAGES:
            f.write(json.dumps({"url": url, "title": title, "text": text}) + "\n")
    build_text_index(root / "pages.jsonl", root / "text")
    (root / "imgs").mkdir()
    with open(root / "imgs" / "images.jsonl", "w") as f:
        for i, (url, title, _) in enumerate(PAGES):
            drawing(i).save(root / "imgs" / f"{i}.png")
            f.write(json.dumps({"image": f"{i}.png", "title": title, "url": url}) + "\n")
    build_image_index(root / "imgs" / "images.jsonl", root / "image")
    (root / "search.yaml").write_text(
        f"top_k: 2\ntext_backend: {{type: local, index_dir: {root / 'text'}}}\n"
        f"image_backend: {{type: local, index_dir: {root / 'image'}}}\n"
    )
    samples = []
    for k, (sid, src, cat, q, gold) in enumerate(ROWS):
        buf = io.BytesIO()
        drawing(k % 3, shift=2).save(buf, format="PNG")
        samples.append(Sample(sid, q, [ImageData(bytes=buf.getvalue())], Answers(gold), src, cat))
    write_samples(samples, root / "test.parquet")
    return root


def _norm(s: str) -> str:
    s = "".join(ch for ch in s.lower() if ch not in string.punctuation)
    return " ".join(w for w in s.split() if w not in ("a", "an", "the"))


def _expected(records: list[dict]) -> dict[str, dict]:
    """Per-source figures computed here from the written records' turns (not from the summary code)."""
    groups: dict[str, list] = defaultdict(list)
    for r in records:
        groups[r["data_source"]].append(r)
    out = {}
    for src, rs in groups.items():
        tools = [[t["tool"] for t in r["turns"] if t.get("tool")] for r in rs]
        img = [any(t["name"] == "image_search" for t in ts) for ts in tools]
        txt = [any(t["name"] == "text_search" for t in ts) for ts in tools]
        calls = [t for ts in tools for t in ts]
        golds = [[_norm(r["gold"]["ground_truth"])] + [_norm(c) for c in r["gold"]["candidates"]] for r in rs]
        em = [
            r["final_answer"] is not None and _norm(r["final_answer"]) in g
            for r, g in zip(rs, golds, strict=True)
        ]
        out[src] = {
            "n": len(rs),
            "acc_em": sum(em) / len(rs),
            "search_ratio_image": sum(img) / len(rs),
            "search_ratio_text": sum(txt) / len(rs),
            "search_ratio_any": sum(a or b for a, b in zip(img, txt, strict=True)) / len(rs),
            "searches_per_question": len(calls) / len(rs),
            "turns_mean": sum(len(r["turns"]) for r in rs) / len(rs),
            "tool_calls": len(calls),
            "tool_error_ratio": (sum(not t["ok"] for t in calls) / len(calls)) if calls else 0.0,
            "finish": dict(Counter(r["finish_reason"] for r in rs)),
        }
    return out


def test_eval_cli_tiny_model_two_sources(tiny_model_dir, world, tmp_path, capsys) -> None:
    out = tmp_path / "rag"
    argv = ["eval", "--model", str(tiny_model_dir), "--data", str(world / "test.parquet")]
    argv += [
        "--search",
        str(world / "search.yaml"),
        "--out",
        str(out),
        "--policy",
        "rag",
        "--max-new-tokens",
        "24",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert (
        "| birds | 2 |" in printed
        and "| buildings | 3 |" in printed
        and "samples.jsonl (5 samples)" in printed
    )

    table = pq.read_table(world / "test.parquet").to_pylist()  # the input, read without our reader
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [row["data_id"] for row in table]
    assert [r["data_source"] for r in records] == [row["data_source"] for row in table]
    for r, row in zip(records, table, strict=True):
        assert r["gold"]["ground_truth"] == row["reward_model"]["ground_truth"]
        assert r["question"] == row["prompt"][0]["content"].replace("<image>", "")
        assert r["turns"] and r["turns"][0]["action"]["kind"] == "image_search"  # forced by the rag policy
        assert r["turns"][0]["tool"]["ok"] and r["turns"][0]["tool"]["n_images"] == 2
        assert r["finish_reason"] in ("answer", "max_turns", "max_tokens", "tool_limit")
        assert {"acc", "format", "total"} <= set(r["reward"]) and r["tokens"]["prompt"] > 0

    summary = json.loads((out / "summary.json").read_text())
    expected = _expected(records)
    assert set(summary["by_source"]) == {"birds", "buildings"}
    for src, exp in expected.items():
        got = summary["by_source"][src]
        for key, value in exp.items():
            assert got[key] == pytest.approx(value) if isinstance(value, float) else got[key] == value, (
                src,
                key,
            )
    assert summary["overall"]["n"] == 5 and summary["overall"]["search_ratio_image"] == 1.0
    assert summary["by_category"]["search_required"]["n"] == 3
    assert summary["by_source_category"]["buildings"]["search_free"]["n"] == 1
    md = (out / "summary.md").read_text()
    assert "## By data source and category" in md and "| buildings / search_required | 2 |" in md


def test_eval_agent_policy_limit_and_errors(tiny_model_dir, world, tmp_path, capsys) -> None:
    out = tmp_path / "agent"
    argv = ["eval", "--model", str(tiny_model_dir), "--data", str(world / "test.parquet"), "--limit", "2"]
    argv += ["--search", str(world / "search.yaml"), "--out", str(out), "--max-new-tokens", "16"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 2 and list(summary["by_source"]) == ["birds"]
    assert summary["policy"] == "agent" and summary["model"] == str(tiny_model_dir)
    capsys.readouterr()
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(tmp_path / "nope.parquet")]) == 1
    assert "nope.parquet: no such file" in capsys.readouterr().err
    bad = tmp_path / "judge.yaml"
    bad.write_text("model: x\ntemperature: 0.5\n")
    argv = [
        "eval",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(world / "test.parquet"),
        "--judge",
        str(bad),
    ]
    assert main(argv) == 1
    assert "unknown key(s) ['temperature']" in capsys.readouterr().err


def test_eval_pixel_budget_reaches_the_image_processor(tiny_model_dir, world, tmp_path, capsys) -> None:
    """--min-pixels (or data.min_pixels of --config) resizes each 56 x 56 question image: 4 -> 16 image tokens."""
    base = ["eval", "--model", str(tiny_model_dir), "--data", str(world / "test.parquet")]
    base += ["--policy", "direct", "--max-new-tokens", "2", "--limit", "1"]
    prompts = {}
    for name, extra in {
        "own": [],
        "flag": ["--min-pixels", str(112 * 112)],
        "config": ["--config", str(tmp_path / "cfg.yaml")],
    }.items():
        (tmp_path / "cfg.yaml").write_text(f"data:\n  min_pixels: {112 * 112}\n")
        assert main([*base, "--out", str(tmp_path / name), *extra]) == 0
        rec = json.loads((tmp_path / name / "samples.jsonl").read_text().splitlines()[0])
        prompts[name] = rec["tokens"]["prompt"]
    assert prompts["flag"] == prompts["config"] == prompts["own"] + 12
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "bad"), "--min-pixels", "9999", "--max-pixels", "10"]) != 0
    assert "--min-pixels=9999 must be <= --max-pixels=10" in capsys.readouterr().err
