"""Safe conversion of released image-search cache pickles; malicious pickles run nothing."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmsearch_r1.data.image_cache import UnsafePickleError, convert_image_cache, load_image_cache


def _dump(obj, path: Path, protocol: int) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_converts_dict_layout_with_pil_numpy_and_urls(tmp_path: Path, protocol: int) -> None:
    data = {
        "fvqa_1": {
            "titles": ["Eiffel Tower - Wikipedia", "Tower photo"],
            "thumbnails": [Image.new("RGB", (8, 6), "red"), "https://img.example/t.jpg"],
        },
        "fvqa/2": (["A bird"], [np.full((5, 7, 3), 200, dtype=np.uint8)]),
    }
    out = tmp_path / "out"
    counts = convert_image_cache(_dump(data, tmp_path / "c.pkl", protocol), out)
    assert counts == {"keys": 2, "results": 3, "images": 2, "thumbnail_urls": 1}
    cache = load_image_cache(out)
    r = cache["fvqa_1"]
    assert r[0]["title"] == "Eiffel Tower - Wikipedia"
    assert Image.open(out / r[0]["thumbnail"]).size == (8, 6)
    assert r[1]["thumbnail"] is None and r[1]["thumbnail_url"] == "https://img.example/t.jpg"
    img = Image.open(out / cache["fvqa/2"][0]["thumbnail"])
    assert img.size == (7, 5) and img.getpixel((0, 0)) == (200, 200, 200)
    assert "/" not in Path(cache["fvqa/2"][0]["thumbnail"]).name


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('pathlib').Path('MARKER').touch()",))


def test_malicious_pickles_fail_clearly_and_run_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for payload in ({"k": {"titles": ["x"], "thumbnails": [_Evil(marker)]}}, {"k": _EvalEvil()}):
        path = _dump(payload, tmp_path / "evil.pkl", 4)
        with pytest.raises(UnsafePickleError, match="refused to load global"):
            convert_image_cache(path, tmp_path / "out")
        assert not marker.exists()
        assert not Path("MARKER").exists()


def test_cli_convert_and_bad_layout(tmp_path: Path, capsys) -> None:
    from mmsearch_r1.cli import main

    p = _dump({"a": {"title": ["t1"], "images": [Image.new("RGB", (3, 3))]}}, tmp_path / "c.pkl", 4)
    assert main(["data", "convert-image-cache", str(p), str(tmp_path / "o")]) == 0
    assert "1 keys" in capsys.readouterr().out
    lines = (tmp_path / "o" / "manifest.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["key"] == "a"
    bad = _dump(["not", "a", "dict"], tmp_path / "b.pkl", 4)
    assert main(["data", "convert-image-cache", str(bad), str(tmp_path / "o2")]) == 1
    assert "expected a dict" in capsys.readouterr().err
