"""`mmsearch-r1 search index|text|image` in process: build indexes, run the tools, clear errors."""

from __future__ import annotations

import json

from PIL import Image

from mmsearch_r1.cli import main


def test_search_cli(tmp_path, capsys):
    pages = [
        {"url": "http://c/1", "title": "Mount Kosciuszko", "text": "Mount Kosciuszko is 2,228 metres high. It is in Australia."},
        {"url": "http://c/2", "title": "Lake Eyre", "text": "Lake Eyre is a salt lake. It is often dry."},
    ]  # fmt: skip
    (tmp_path / "pages.jsonl").write_text("\n".join(json.dumps(p) for p in pages))
    for i, c in enumerate([(200, 40, 40), (40, 40, 200)]):
        Image.new("RGB", (64, 48), c).save(tmp_path / f"{i}.png")
    rows = [
        {"image": f"{i}.png", "title": t, "url": f"http://c/{i + 1}"}
        for i, t in enumerate(["Red peak", "Blue lake"])
    ]
    (tmp_path / "images.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "idx"

    assert main(["search", "index", "--pages", str(tmp_path / "pages.jsonl"), "--images", str(tmp_path / "images.jsonl"), "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "text index: 2 pages" in printed and "image index: 2 images, embedder builtin" in printed

    assert (
        main(["search", "text", "Kosciuszko height", "--index", str(out), "--question", "How high is it?"])
        == 0
    )
    printed = capsys.readouterr().out
    assert printed.startswith(
        "1. Mount Kosciuszko\nURL: http://c/1\nSummary: Mount Kosciuszko is 2,228 metres high."
    )
    assert "ok=True" in printed and "summaries=1" in printed

    assert main(["search", "image", str(tmp_path / "1.png"), "--index", str(out), "--top-k", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("[thumbnail 64x48] 1. Blue lake\n")

    assert main(["search", "text", "x"]) == 1  # default config: local backend without an index
    assert "needs index_dir" in capsys.readouterr().err
    assert main(["search", "index", "--out", str(out)]) == 1
    assert "--pages and/or --images" in capsys.readouterr().err
    assert main(["search", "image", str(tmp_path / "nope.png"), "--index", str(out)]) == 1
    assert "not found" in capsys.readouterr().err
