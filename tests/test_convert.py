"""Benchmark converters: a small file in each benchmark's released layout, built here, converted and read back."""

from __future__ import annotations

import base64
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmsearch_r1.cli import main
from mmsearch_r1.data import DataError, read_samples
from mmsearch_r1.data.convert import convert


def png(color: str, size: int = 20) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def jpg_file(path, color: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), color).save(path, format="JPEG")


def pixel(sample) -> tuple:
    return sample.images[0].load().getpixel((5, 5))


def test_fvqa_released_schema(tmp_path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "b.png").write_bytes(png("blue"))
    rows = [
        {
            "prompt": [{"role": "user", "content": "<image>What is this landmark?"}],
            "images": [{"bytes": png("red"), "path": None}],
            "reward_model": {
                "ground_truth": "Eiffel Tower",
                "candidate_answers": '["Tour Eiffel"]',
                "style": "rule",
            },
            "data_source": "fvqa_test",
            "image_urls": None,
            "data_id": "fvqa-1",
            "category": "search_required",
        },
        {
            "prompt": [{"role": "user", "content": "<image>Which river?"}],
            "images": [{"bytes": None, "path": "b.png"}],
            "reward_model": {"ground_truth": "Seine", "candidate_answers": "[]", "style": "rule"},
            "data_source": "fvqa_test",
            "image_urls": None,
            "data_id": "fvqa-2",
            "category": "search_free",
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "fvqa.parquet")
    rep = convert("fvqa", [tmp_path / "fvqa.parquet"], tmp_path / "out.parquet", images_dir=tmp_path / "imgs")
    assert (rep.read, rep.written) == (2, 2)
    s = read_samples(tmp_path / "out.parquet").samples
    assert [x.id for x in s] == ["fvqa-1", "fvqa-2"] and s[0].question == "What is this landmark?"
    assert s[0].answers.candidates == ["Tour Eiffel"] and s[1].category == "search_free"
    assert s[0].data_source == "fvqa_test" and pixel(s[1]) == (0, 0, 255)  # the path image was embedded
    with pytest.raises(DataError, match=r"fvqa.parquet row 1 field 'images\[0\]'.*not found.*--images-dir"):
        convert("fvqa", [tmp_path / "fvqa.parquet"], tmp_path / "x.parquet")


def test_infoseek_jsonl_with_image_ids(tmp_path) -> None:
    jpg_file(tmp_path / "oven" / "oven_0001.jpg", "red")
    jpg_file(tmp_path / "oven" / "sub" / "oven_0002.JPEG", "green")
    recs = [
        {
            "data_id": "infoseek_val_0001",
            "image_id": "oven_0001",
            "question": "Which country is this building in?",
            "answer": ["France", "French Republic"],
            "answer_eval": ["France", "FR"],
            "data_split": "val_unseen_question",
        },
        {
            "data_id": "infoseek_val_0002",
            "image_id": "oven_0002",
            "question": "How tall is this tower in metres?",
            "answer": ["330"],
            "answer_eval": [{"wikidata": 330.0, "range": [297.0, 363.0]}],
            "data_split": "val_unseen_entity",
        },
        {"data_id": "infoseek_val_0003", "image_id": "oven_9999", "question": "Where?", "answer": ["x"]},
    ]
    src = tmp_path / "infoseek_val.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(DataError, match=r"infoseek_val.jsonl row 2 field 'image_id'.*'oven_9999' not found"):
        convert("infoseek", [src], tmp_path / "out.parquet", images_dir=tmp_path / "oven")
    rep = convert(
        "infoseek", [src], tmp_path / "out.parquet", images_dir=tmp_path / "oven", skip_bad_rows=True
    )
    assert (rep.read, rep.written, rep.skipped["bad row"]) == (3, 2, 1) and "oven_9999" in rep.errors[0]
    s = read_samples(tmp_path / "out.parquet").samples
    assert s[0].answers.ground_truth == "France" and s[0].answers.candidates == ["French Republic", "FR"]
    assert s[1].answers.all() == ["330"]  # the wikidata value 330.0 is the same answer
    assert s[1].extra_info["data_split"] == "val_unseen_entity" and s[0].data_source == "infoseek"
    assert s[1].images[0].load().size == (24, 16)


def test_mmsearch_end2end_keeps_image_questions(tmp_path) -> None:
    rows = [
        {
            "sample_id": "news_1",
            "query": "Who is the person in the image?",
            "query_image": {"bytes": png("red"), "path": "q1.png"},
            "image_search_result": None,
            "area": "news",
            "subfield": "politics",
            "timestamp": "2024-07",
            "gt_requery": "who",
            "gt_answer": "Ada Lovelace",
            "alternative_gt_answers": ["Augusta Ada King"],
        },
        {
            "sample_id": "news_2",
            "query": "When was the event held?",
            "query_image": None,
            "image_search_result": None,
            "area": "news",
            "subfield": "sports",
            "timestamp": "2024-08",
            "gt_requery": "when",
            "gt_answer": "2024",
            "alternative_gt_answers": [],
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "end2end.parquet")
    rep = convert("mmsearch", [tmp_path / "end2end.parquet"], tmp_path / "out.parquet")
    assert (rep.read, rep.written) == (2, 1) and rep.skipped == {"no query image (text-only question)": 1}
    (s,) = read_samples(tmp_path / "out.parquet").samples
    assert (s.id, s.data_source, s.answers.candidates) == ("news_1", "mmsearch", ["Augusta Ada King"])
    assert s.extra_info["subfield"] == "politics" and pixel(s) == (255, 0, 0)


def test_simplevqa_english_only_base64_images(tmp_path) -> None:
    recs = [
        {"data_id": 1, "image": base64.b64encode(png("green", 40)).decode(), "question": "What animal?",
         "answer": "Panda", "language": "EN", "original_category": "nature"},
        {"data_id": 2, "image": base64.b64encode(png("red", 40)).decode(), "question": "这是什么?",
         "answer": "熊猫", "language": "CN"},
        {"data_id": 3, "image": "data:image/png;base64," + base64.b64encode(png("blue", 40)).decode(),
         "question": "Which sea?", "answer": "Baltic Sea", "language": "EN"},
    ]  # fmt: skip
    src = tmp_path / "simplevqa.json"
    src.write_text(json.dumps(recs))
    rep = convert("simplevqa", [src], tmp_path / "out.parquet", data_source="simplevqa_en")
    assert (rep.written, rep.skipped["language CN (English only)"]) == (2, 1)
    s = read_samples(tmp_path / "out.parquet").samples
    assert [x.id for x in s] == ["1", "3"] and s[1].data_source == "simplevqa_en"
    assert pixel(s[0]) == (0, 128, 0) and pixel(s[1]) == (0, 0, 255)
    assert s[0].extra_info["original_category"] == "nature"


def test_livevqa_assumed_layout_and_errors(tmp_path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png("red"))
    recs = [
        {"id": "lv1", "image": "a.png", "question": "Which team won?", "answer": ["Team A", "A"], "topic": "sport"},
        {"id": "lv2", "image_path": "a.png", "query": "Who spoke?", "gt_answer": "Jane Doe",
         "alternative_answers": ["J. Doe"]},
    ]  # fmt: skip
    src = tmp_path / "livevqa.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    rep = convert("livevqa", [src], tmp_path / "out.parquet", images_dir=tmp_path / "img")
    s = read_samples(tmp_path / "out.parquet").samples
    assert (
        rep.written == 2 and s[0].answers.all() == ["Team A", "A"] and s[1].answers.candidates == ["J. Doe"]
    )
    assert s[1].question == "Who spoke?" and s[0].extra_info == {"topic": "sport"}

    dup = tmp_path / "dup.jsonl"
    dup.write_text(json.dumps(recs[0]) + "\n" + json.dumps(recs[0]) + "\n")
    with pytest.raises(DataError, match=r"dup.jsonl row 1 field 'id': duplicate id 'lv1'"):
        convert("livevqa", [dup], tmp_path / "x.parquet", images_dir=tmp_path / "img")
    url = tmp_path / "url.jsonl"
    url.write_text(json.dumps({**recs[0], "image": "https://example.com/a.png"}) + "\n")
    with pytest.raises(DataError, match=r"row 0 field 'image': the image is a URL"):
        convert("livevqa", [url], tmp_path / "x.parquet")
    noans = tmp_path / "noans.jsonl"
    noans.write_text(json.dumps({"id": "x", "image": "a.png", "question": "q"}) + "\n")
    with pytest.raises(DataError, match=r"row 0 field 'answer': missing answer"):
        convert("livevqa", [noans], tmp_path / "x.parquet", images_dir=tmp_path / "img")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({**recs[0], "image": "bad.png"}) + "\n")
    (tmp_path / "img" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"row 0 field 'image': cannot decode image"):
        convert("livevqa", [broken], tmp_path / "x.parquet", images_dir=tmp_path / "img")
    with pytest.raises(ValueError, match="unknown format 'vqa2'"):
        convert("vqa2", [src], tmp_path / "x.parquet")


def test_data_convert_cli(tmp_path, capsys) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png("red"))
    src = tmp_path / "live.jsonl"
    src.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "image": "a.png", "question": "q?", "answer": "a"}) + "\n"
            for i in range(3)
        )
    )
    out = tmp_path / "live.parquet"
    argv = [
        "data",
        "convert",
        "--format",
        "livevqa",
        str(src),
        "--out",
        str(out),
        "--images-dir",
        str(tmp_path / "img"),
    ]
    assert main([*argv, "--limit", "2"]) == 0
    assert f"wrote {out}: 2 samples (2 records read)" in capsys.readouterr().out
    assert len(read_samples(out).samples) == 2
    assert (
        main(["data", "convert", "--format", "livevqa", str(tmp_path / "none.jsonl"), "--out", str(out)]) == 1
    )
    assert "input file not found" in capsys.readouterr().err
