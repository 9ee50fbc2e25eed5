"""Data layer: released parquet schema round trip, named errors for broken rows, inspect, resize."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmsearch_r1.data import DataError, read_many, read_samples, write_samples
from mmsearch_r1.data.images import resize_within
from mmsearch_r1.types import Answers, ImageData, Sample


def _encoded(color, size=(40, 30), fmt="JPEG") -> bytes:
    b = io.BytesIO()
    Image.new("RGB", size, color).save(b, format=fmt)
    return b.getvalue()


def _row(i: int, **over):
    row = {
        "prompt": [{"role": "user", "content": f"<image>What is object {i}?"}],
        "images": [{"bytes": _encoded((i * 20 % 256, 50, 90)), "path": None}],
        "reward_model": {
            "ground_truth": f"obj{i}",
            "candidate_answers": json.dumps([f"o{i}"]),
            "style": "rule",
        },
        "data_source": "src_a" if i % 3 else "src_b",
        "image_urls": None,
        "data_id": f"id{i}",
        "category": "search_free" if i % 2 else "search_required",
    }
    row.update(over)
    return row


def _write(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return path


def test_reads_released_schema_with_real_jpegs_and_pngs(tmp_path: Path) -> None:
    rows = [_row(i) for i in range(6)]
    rows[2]["images"] = [{"bytes": _encoded((1, 2, 3), (64, 48), "PNG"), "path": "x.png"}]
    rows[3]["reward_model"]["candidate_answers"] = json.dumps(["a", "b"])
    res = read_samples(_write(tmp_path / "d.parquet", rows))
    assert [s.id for s in res.samples] == [f"id{i}" for i in range(6)]
    s0 = res.samples[0]
    assert s0.question == "What is object 0?"
    assert s0.answers.ground_truth == "obj0" and s0.answers.candidates == ["o0"]
    assert s0.images[0].load().size == (40, 30)
    assert res.samples[2].images[0].load().size == (64, 48)
    assert res.samples[3].answers.candidates == ["a", "b"]
    assert res.samples[1].category == "search_free"


def test_candidates_as_list_column_and_extra_info_struct(tmp_path: Path) -> None:
    rows = [_row(0)]
    rows[0]["reward_model"] = {"ground_truth": "Paris", "candidate_answers": ["paris city"], "style": "rule"}
    rows[0]["extra_info"] = {"split": "train", "index": 3}
    s = read_samples(_write(tmp_path / "d.parquet", rows)).samples[0]
    assert s.answers.all() == ["Paris", "paris city"]
    assert s.extra_info == {"split": "train", "index": 3}


def test_round_trip_through_writer(tmp_path: Path) -> None:
    samples = [
        Sample(
            id=f"s{i}",
            question=f"Where is {i}?",
            images=[ImageData(bytes=_encoded((i, i, i)))],
            answers=Answers(f"a{i}", [f"b{i}"]),
            data_source="world",
            category="search_required",
            image_urls=["http://example.com/x.jpg"] if i == 1 else None,
            extra_info={"k": i},
        )
        for i in range(3)
    ]
    p = write_samples(samples, tmp_path / "sub" / "w.parquet")
    back = read_samples(p).samples
    for a, b in zip(samples, back, strict=True):
        assert (a.id, a.question, a.answers, a.data_source, a.category, a.image_urls, a.extra_info) == (
            b.id,
            b.question,
            b.answers,
            b.data_source,
            b.category,
            b.image_urls,
            b.extra_info,
        )
        assert a.images[0].bytes == b.images[0].bytes


@pytest.mark.parametrize(
    "over, field, text",
    [
        ({"images": [{"bytes": b"not an image", "path": None}]}, "images[0]", "cannot decode image"),
        (
            {"reward_model": {"ground_truth": "", "candidate_answers": "[]", "style": "rule"}},
            "reward_model.ground_truth",
            "missing answer",
        ),
        ({"reward_model": None}, "reward_model", "missing"),
        ({"prompt": "hello"}, "prompt", "not a list"),
        ({"prompt": [{"role": "system", "content": "x"}]}, "prompt", "no user message"),
        (
            {"reward_model": {"ground_truth": "x", "candidate_answers": "{oops", "style": "rule"}},
            "reward_model.candidate_answers",
            "not a JSON list",
        ),
    ],
)
def test_each_broken_row_gets_its_named_error_and_skip_counts(tmp_path: Path, over, field, text) -> None:
    rows = [_row(0), _row(1, **over), _row(2)]
    if isinstance(over.get("prompt"), str):  # a column holds one type: the good rows store JSON strings
        for r in (rows[0], rows[2]):
            r["prompt"] = json.dumps(r["prompt"])
    path = _write(tmp_path / "bad.parquet", rows)
    with pytest.raises(DataError) as ei:
        read_samples(path)
    e = ei.value
    assert (e.file, e.row, e.field) == (str(path), 1, field)
    assert text in str(e) and "row 1" in str(e) and str(path) in str(e)
    res = read_samples(path, skip_bad_rows=True)
    assert [s.id for s in res.samples] == ["id0", "id2"]
    assert res.n_skipped == 1 and res.skipped[0].field == field


def test_wrong_type_images_and_missing_column(tmp_path: Path) -> None:
    rows = [_row(0)]
    rows[0]["images"] = "abc"
    with pytest.raises(DataError, match=r"row 0 field 'images'"):
        read_samples(_write(tmp_path / "a.parquet", rows))
    rows = [{k: v for k, v in _row(0).items() if k != "reward_model"}]
    with pytest.raises(DataError, match="reward_model.*missing column"):
        read_samples(_write(tmp_path / "b.parquet", rows))
    with pytest.raises(FileNotFoundError):
        read_samples(tmp_path / "nope.parquet")


def test_read_many_and_lazy_decode(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.parquet", [_row(i) for i in range(3)])
    b = _write(tmp_path / "b.parquet", [_row(i) for i in range(3, 5)])
    res = read_many([a, b], validate_images=False)
    assert len(res.samples) == 5
    assert res.samples[0].images[0]._decoded is None  # not decoded until used
    res.samples[0].images[0].load()
    assert res.samples[0].images[0]._decoded is not None


def test_inspect_counts_match_independent_counts(tmp_path: Path, capsys) -> None:
    from mmsearch_r1.cli import main

    rows = [_row(i) for i in range(7)] + [_row(7, images=[{"bytes": b"zz", "path": None}])]
    path = _write(tmp_path / "d.parquet", rows)
    assert main(["data", "inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    good = rows[:7]
    assert info["rows"] == 8 and info["bad_rows"] == 1
    assert info["data_sources"] == {
        "src_a": sum(r["data_source"] == "src_a" for r in good),
        "src_b": sum(r["data_source"] == "src_b" for r in good),
    }
    assert info["categories"]["search_free"] == sum(r["category"] == "search_free" for r in good)
    assert info["images"]["total"] == 7 and info["images"]["width"]["max"] == 40
    assert info["answer_chars"]["max"] == max(len(r["reward_model"]["ground_truth"]) for r in good)
    assert main(["data", "inspect", str(path)]) == 0
    assert "rows: 8 (good 7, bad 1)" in capsys.readouterr().out


def test_resize_within_bounds() -> None:
    big = Image.new("RGB", (1000, 500))
    small = Image.new("RGB", (10, 5))
    r = resize_within(big, 3136, 100_000)
    assert r.size[0] * r.size[1] <= 100_000 and abs(r.size[0] / r.size[1] - 2) < 0.05
    r = resize_within(small, 3136, 100_000)
    assert r.size[0] * r.size[1] >= 3136
    ok = Image.new("RGB", (100, 100))
    assert resize_within(ok, 3136, 100_000) is ok
    with pytest.raises(ValueError):
        resize_within(ok, 10, 5)
