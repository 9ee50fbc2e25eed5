"""`data convert-image-cache` is atomic: a bad thumbnail never leaves a partial manifest or destroys a good output."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from PIL import Image

from _badimages import unloadable_png
from mmsearch_r1.data.image_cache import convert_image_cache, load_image_cache


def _dump(data: object, path: Path) -> Path:
    path.write_bytes(pickle.dumps(data, protocol=4))
    return path


GOOD = {"a": {"titles": ["t1", "t2"], "thumbnails": [Image.new("RGB", (3, 3), (1, 2, 3)), "http://x/t.png"]}}
BAD = {
    "a": GOOD["a"],
    "b": {"titles": ["broken"], "thumbnails": [unloadable_png()]},
    "c": {"titles": ["ok"], "thumbnails": [Image.new("RGB", (4, 4))]},
}


def test_bad_thumbnail_fails_the_run_and_keeps_the_existing_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    convert_image_cache(_dump(GOOD, tmp_path / "good.pkl"), out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError) as ei:  # BadCacheItem
        convert_image_cache(_dump(BAD, tmp_path / "bad.pkl"), out)
    assert (
        getattr(ei.value, "key", None) == "b"
        and "undecodable thumbnail" in str(ei.value)
        and "'b'" in str(ei.value)
    )
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the good output is untouched
    assert list(load_image_cache(out)) == ["a"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dirs left


def test_skip_bad_leaves_the_key_out_and_counts_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mmsearch_r1.cli import main

    out = tmp_path / "out"
    src = _dump(BAD, tmp_path / "bad.pkl")
    assert main(["data", "convert-image-cache", str(src), str(out)]) == 1
    assert "key 'b'" in capsys.readouterr().err and not out.exists()
    assert main(["data", "convert-image-cache", str(src), str(out), "--skip-bad"]) == 0
    printed = capsys.readouterr().out
    assert "2 keys" in printed and "skipped 1 bad keys" in printed and "key 'b'" in printed
    cache = load_image_cache(out)
    assert sorted(cache) == ["a", "c"]
    names = sorted(p.name for p in (out / "images").iterdir())
    assert len(names) == 2 and not any("b-" in n[:2] for n in names)
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(x)["key"] for x in lines] == ["a", "c"]
