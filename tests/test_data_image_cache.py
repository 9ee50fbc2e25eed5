"""Safe conversion of released image-search cache pickles; malicious pickles run nothing."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmsearch_r1.data.image_cache import UnsafePickleError, convert_image_cache, load_image_cache


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 120, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def _dump(obj, path: Path, protocol: int) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [0, 1, 2, 4, 5])
def test_converts_dict_layout_with_pil_numpy_and_urls(tmp_path: Path, protocol: int) -> None:
    data = {
        "fvqa_1": {
            "titles": ["Eiffel Tower - Wikipedia", "Tower photo"],
            "thumbnails": [Image.new("RGB", (8, 6), "red"), "https://img.example/t.jpg"],
        },
        "fvqa/2": (["A bird"], [np.full((5, 7, 3), 200, dtype=np.uint8)]),
        "fvqa_3": {
            "title": ["jpeg bytes", "no thumb"],
            "thumbnail": [_jpeg(9, 4), None],
            "urls": ["https://p"],
        },
    }
    out = tmp_path / "out"
    counts = convert_image_cache(_dump(data, tmp_path / "c.pkl", protocol), out)
    assert counts == {"keys": 3, "results": 5, "images": 3, "thumbnail_urls": 1, "skipped": 0}
    cache = load_image_cache(out)
    r = cache["fvqa_1"]
    assert r[0]["title"] == "Eiffel Tower - Wikipedia"
    assert Image.open(out / r[0]["thumbnail"]).size == (8, 6)
    assert r[1]["thumbnail"] is None and r[1]["thumbnail_url"] == "https://img.example/t.jpg"
    img = Image.open(out / cache["fvqa/2"][0]["thumbnail"])
    assert img.size == (7, 5) and img.getpixel((0, 0)) == (200, 200, 200)
    assert "/" not in Path(cache["fvqa/2"][0]["thumbnail"]).name
    r3 = cache["fvqa_3"]
    assert Image.open(out / r3[0]["thumbnail"]).size == (9, 4) and r3[0]["url"] == "https://p"
    assert r3[1] == {"title": "no thumb", "thumbnail": None, "thumbnail_url": None, "url": None}
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        Path(x["thumbnail"]).name for rs in cache.values() for x in rs if x["thumbnail"]
    )


def test_jpeg_image_objects_survive_old_protocols(tmp_path: Path) -> None:
    jpg = Image.open(io.BytesIO(_jpeg(6, 6)))  # a JpegImageFile, as a Lens thumbnail opened from bytes
    for protocol in (0, 2, 5):
        out = tmp_path / f"o{protocol}"
        convert_image_cache(_dump({"k": (["t"], [jpg])}, tmp_path / "j.pkl", protocol), out)
        assert Image.open(out / load_image_cache(out)["k"][0]["thumbnail"]).size == (6, 6)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('pathlib').Path('MARKER').touch()",))


class _SubprocessEvil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (subprocess.run, (["touch", str(self.marker)],))


class _GetattrEvil:  # getattr is the first step of reaching dangerous attributes from harmless objects
    def __reduce__(self):
        return (getattr, ("x", "__class__"))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickles_fail_clearly_and_run_nothing(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    payloads = [
        ({"k": {"titles": ["x"], "thumbnails": [_Evil(marker)]}}, "system"),
        ({"k": _EvalEvil()}, "builtins.eval"),
        ({"k": (["x"], [_SubprocessEvil(marker)])}, "subprocess.run"),
        ({"k": _GetattrEvil()}, "builtins.getattr"),
    ]
    for payload, refused in payloads:
        path = _dump(payload, tmp_path / "evil.pkl", protocol)
        with pytest.raises(UnsafePickleError, match="refused to load global") as ei:
            convert_image_cache(path, tmp_path / "out")
        assert refused in str(ei.value)
        assert not marker.exists()
        assert not Path("MARKER").exists()
        assert not (tmp_path / "out" / "manifest.jsonl").exists()


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
