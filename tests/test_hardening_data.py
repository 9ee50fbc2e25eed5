"""Bad images are bad rows: a decompression bomb header, and an image that passes verify() but cannot load."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from _badimages import bomb_png, unloadable_png
from mmsearch_r1.data import DataError, read_samples


def _good_png() -> bytes:
    b = io.BytesIO()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(b, format="PNG")
    return b.getvalue()


def _row(i: int, image: bytes) -> dict:
    return {
        "prompt": [{"role": "user", "content": f"<image>What is object {i}?"}],
        "images": [{"bytes": image, "path": None}],
        "reward_model": {"ground_truth": f"obj{i}", "candidate_answers": "[]", "style": "rule"},
        "data_source": "src",
        "data_id": f"id{i}",
    }


def _write(path: Path, images: list[bytes]) -> Path:
    pq.write_table(pa.Table.from_pylist([_row(i, im) for i, im in enumerate(images)]), str(path))
    return path


def test_fixtures_are_what_they_claim() -> None:
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(bomb_png()))
    with Image.open(io.BytesIO(unloadable_png())) as im:
        im.verify()  # passes
    with pytest.raises(Exception), Image.open(io.BytesIO(unloadable_png())) as im:  # noqa: B017
        im.load()


def test_decompression_bomb_is_a_named_bad_row(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.parquet", [_good_png(), bomb_png(), _good_png()])
    with pytest.raises(DataError) as ei:
        read_samples(path)
    assert (ei.value.row, ei.value.field) == (1, "images[0]")
    assert "DecompressionBombError" in str(ei.value)
    res = read_samples(path, skip_bad_rows=True)
    assert [s.id for s in res.samples] == ["id0", "id2"] and res.n_skipped == 1


def test_inspect_counts_bomb_and_unloadable_images_as_bad_rows(tmp_path: Path, capsys) -> None:
    from mmsearch_r1.cli import main

    path = _write(tmp_path / "d.parquet", [_good_png(), bomb_png(), unloadable_png(), _good_png()])
    assert main(["data", "inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["rows"], info["good_rows"], info["bad_rows"]) == (4, 2, 2)
    assert info["images"]["total"] == 2 and info["images"]["width"]["max"] == 40
    assert any("row 1" in e and "DecompressionBombError" in e for e in info["bad_examples"])
    assert any("row 2" in e and "cannot decode image" in e for e in info["bad_examples"])
