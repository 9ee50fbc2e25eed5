"""Benchmark converters: the released files of FVQA, InfoSeek, MMSearch, SimpleVQA and LiveVQA -> our parquet.

`convert(fmt, inputs, out, images_dir=None, data_source=None, limit=None, skip_bad_rows=False)` reads every
input (`.parquet`, `.jsonl`, or `.json` holding a list or a `{"data": [...]}` object), maps each record to a
`Sample` and writes them with `data.write_samples` (the released veRL-style schema). Images are embedded as
bytes and checked to decode; a record whose image cannot be found or decoded is a `DataError` naming the file,
the row and the field (or is skipped and counted with `skip_bad_rows`). Duplicate ids are an error. Records a
benchmark's protocol leaves out (MMSearch questions without an image, non-English SimpleVQA items) are skipped
and counted, not errors. Returns a `ConvertReport` (read / written / skipped by reason).

Layouts (field names as the benchmarks document them; where one is not documented we say so):
- fvqa: the MMSearch-R1 release, already in the veRL schema (`prompt`, `images`, `reward_model`,
  `data_source`, `image_urls`, `data_id`, `category`); rows are validated and re-written; an image given only by
  a relative `path` is read from `--images-dir`. data_source: the row's own, else "fvqa".
- infoseek: the InfoSeek jsonl (`data_id`, `image_id`, `question`, `answer` list, `answer_eval` list of strings
  or of `{"wikidata": number, "range": [lo, hi]}`, `data_split`); the image is `--images-dir/<image_id>.<ext>`
  (jpg, jpeg, JPEG, png; searched recursively once). Gold = `answer[0]`; candidates = the other answers and the
  string / wikidata forms of `answer_eval`. `data_split` goes to extra_info.
- mmsearch: the MMSearch `end2end` parquet (`sample_id`, `query`, `query_image` {bytes, path} or null,
  `gt_answer`, `alternative_gt_answers` list or JSON string, `area`, `subfield`, `timestamp`); only rows with a
  query image are kept (171 in the release).
- simplevqa: the SimpleVQA release (`data_id`, `image` {bytes, path} / base64 string / path, `question`,
  `answer`, `language`, `original_category`, `vqa_category`, `source`); only English rows are kept when
  `language` is present (values "EN", "en", "english").
- livevqa: no column list is documented for its release; we assume records with an id (`id`, `sample_id` or
  `question_id`), an image (`image`, `image_path`, `img_path` or the first of `images`; struct, base64 or path),
  the question (`question` or `query`), the answer (`answer` or `gt_answer`, a string or a list) and optional
  other accepted answers (`candidates`, `alternative_answers`, `answers`). Adjust the aliases if a release differs.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsearch_r1.data.errors import DataError
from mmsearch_r1.types import Answers, ImageData, Sample

FORMATS = ("fvqa", "infoseek", "mmsearch", "simplevqa", "livevqa")
_BASE64 = re.compile(r"[A-Za-z0-9+/\n]+={0,2}")
IMAGE_EXTS = (".jpg", ".jpeg", ".JPEG", ".JPG", ".png", ".PNG", ".webp")


class Skip(Exception):
    """A record the benchmark's protocol leaves out (counted by reason, not an error)."""


@dataclass
class ConvertReport:
    read: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    errors: list[str] = field(default_factory=list)  # bad rows skipped with skip_bad_rows

    def to_json(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "written": self.written,
            "skipped": dict(self.skipped),
            "errors": self.errors,
        }


# ------------------------------------------------------------------------------------------------ reading
def iter_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row index, record) of a .parquet, .jsonl or .json file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(str(p))
        except Exception as e:  # pyarrow raises several types for a non-parquet file
            raise DataError(str(p), None, None, f"not a parquet file ({e})") from None
        index = 0
        for g in range(pf.num_row_groups):
            for row in pf.read_row_group(g).to_pylist():
                yield index, row
                index += 1
    elif suffix == ".jsonl":
        with p.open(encoding="utf-8") as fh:
            for index, line in enumerate(fh):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(str(p), index, None, f"not JSON ({e.msg})") from None
                if not isinstance(rec, dict):
                    raise DataError(str(p), index, None, "a line must be a JSON object")
                yield index, rec
    elif suffix == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data = next(
                (data[k] for k in ("data", "rows", "questions", "samples") if isinstance(data.get(k), list)),
                data,
            )
        if not isinstance(data, list):
            raise DataError(
                str(p), None, None, "a .json input must hold a list of records (or {'data': [...]})"
            )
        for index, rec in enumerate(data):
            if not isinstance(rec, dict):
                raise DataError(str(p), index, None, "a record must be a JSON object")
            yield index, rec
    else:
        raise DataError(
            str(p), None, None, f"unsupported input type {p.suffix!r} (use .parquet, .jsonl or .json)"
        )


# ------------------------------------------------------------------------------------------------ helpers
class _Row:
    """One record with error helpers that name the file, row and field."""

    def __init__(self, rec: dict[str, Any], file: str, index: int, images_dir: Path | None) -> None:
        self.rec, self.file, self.index, self.images_dir = rec, file, index, images_dir

    def err(self, fieldname: str | None, msg: str) -> DataError:
        return DataError(self.file, self.index, fieldname, msg)

    def first(self, keys: Sequence[str], *, required: bool = True, what: str = "") -> tuple[str, Any]:
        for k in keys:
            v = self.rec.get(k)
            if v is not None and not (isinstance(v, str) and not v.strip()):
                return k, v
        if required:
            raise self.err(keys[0], f"missing {what or keys[0]} (looked for {', '.join(keys)})")
        return keys[0], None

    def text(self, keys: Sequence[str], what: str) -> str:
        key, v = self.first(keys, what=what)
        if isinstance(v, (list, tuple)):
            v = v[0] if v else None
        if not isinstance(v, (str, int, float)) or not str(v).strip():
            raise self.err(key, f"{what} must be non-empty text, got {type(v).__name__}")
        return str(v).strip()

    def image(self, key: str, value: Any) -> ImageData:
        img = self._image(key, value)
        try:
            img.load()
        except ValueError as e:
            raise self.err(key, str(e)) from None
        img._decoded = None  # keep only the bytes; decode again when used
        return img

    def _image(self, key: str, value: Any) -> ImageData:
        if isinstance(value, (list, tuple)):
            if not value:
                raise self.err(key, "empty image list")
            value = value[0]
        if isinstance(value, (bytes, bytearray)):
            return ImageData(bytes=bytes(value))
        if isinstance(value, dict):
            if value.get("bytes") is not None:
                return ImageData(bytes=bytes(value["bytes"]), path=value.get("path"))
            if value.get("path"):
                return self._file(key, str(value["path"]))
            raise self.err(key, "image struct has neither bytes nor path")
        if isinstance(value, str):
            s = value.strip()
            if s.startswith(("http://", "https://")):
                raise self.err(key, "the image is a URL; download the images and pass --images-dir")
            if s.startswith("data:image"):
                s = s.split(",", 1)[-1]
                return ImageData(bytes=self._b64(key, s))
            if len(s) >= 64 and _BASE64.fullmatch(s):  # a file name has a dot; base64 text has none
                return ImageData(bytes=self._b64(key, s))
            return self._file(key, s)
        raise self.err(key, f"cannot read an image from {type(value).__name__}")

    def _b64(self, key: str, s: str) -> bytes:
        try:
            return base64.b64decode(s, validate=False)
        except (binascii.Error, ValueError):
            raise self.err(key, "not valid base64 image data") from None

    def _file(self, key: str, name: str) -> ImageData:
        p = Path(name)
        candidates = [p] if p.is_absolute() else []
        if self.images_dir is not None and not p.is_absolute():
            candidates.append(self.images_dir / p)
        for c in candidates:
            if c.is_file():
                return ImageData(bytes=c.read_bytes(), path=str(c))
        hint = "" if self.images_dir is not None else " (pass --images-dir)"
        raise self.err(key, f"image file {name!r} not found{hint}")


def _answer_list(row: _Row, key: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                value = json.loads(s)
            except json.JSONDecodeError:
                raise row.err(key, "a string that looks like a list but is not JSON") from None
        else:
            return [s] if s else []
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        value = [value]
    out = []
    for v in value:
        if isinstance(v, dict):  # InfoSeek numeric: {"wikidata": 1.0, "range": [0.9, 1.1]}
            v = v.get("wikidata")
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, (str, int, float)) and str(v).strip():
            out.append(str(v).strip())
    return out


def _answers(ground_truth: str, others: Sequence[str]) -> Answers:
    cands: list[str] = []
    for c in others:
        if c != ground_truth and c not in cands:
            cands.append(c)
    return Answers(ground_truth, cands)


def _meta(rec: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {k: rec[k] for k in keys if rec.get(k) not in (None, "")}


# ------------------------------------------------------------------------------------------------ formats
def _fvqa(row: _Row, source: str | None) -> Sample:
    from mmsearch_r1.data.reader import row_to_sample

    s = row_to_sample(row.rec, row.file, row.index, validate_images=False)
    s.images = [
        row.image(f"images[{i}]", {"bytes": im.bytes, "path": im.path}) for i, im in enumerate(s.images)
    ]
    if not s.images:
        raise row.err("images", "no image")
    s.data_source = source or (s.data_source if s.data_source != "unknown" else "fvqa")
    return s


class _InfoSeekImages:
    """image_id -> file under images_dir (flat first, then one recursive index)."""

    def __init__(self, images_dir: Path | None) -> None:
        self.dir = images_dir
        self._index: dict[str, Path] | None = None

    def find(self, image_id: str) -> Path | None:
        if self.dir is None:
            return None
        for ext in IMAGE_EXTS:
            p = self.dir / f"{image_id}{ext}"
            if p.is_file():
                return p
        if self._index is None:
            self._index = {}
            for p in self.dir.rglob("*"):
                if p.suffix in IMAGE_EXTS:
                    self._index.setdefault(p.stem, p)
        return self._index.get(image_id)


def _infoseek(row: _Row, source: str | None, images: _InfoSeekImages) -> Sample:
    sid = row.text(["data_id"], "id")
    question = row.text(["question"], "question")
    key, answer = row.first(["answer"], what="answer")
    answers = _answer_list(row, key, answer)
    if not answers:
        raise row.err("answer", "no answer text")
    answers += _answer_list(row, "answer_eval", row.rec.get("answer_eval"))
    image_id = row.text(["image_id"], "image id")
    path = images.find(image_id)
    if path is None:
        hint = f" in {images.dir}" if images.dir else " (pass --images-dir)"
        raise row.err("image_id", f"image {image_id!r} not found{hint}")
    img = row.image("image_id", str(path))
    extra = _meta(row.rec, ["data_split", "image_id", "entity_id", "entity_text", "question_type"])
    return Sample(
        sid, question, [img], _answers(answers[0], answers[1:]), source or "infoseek", extra_info=extra
    )


def _mmsearch(row: _Row, source: str | None) -> Sample:
    if row.rec.get("query_image") in (None, "", {}) or (
        isinstance(row.rec["query_image"], dict) and not any(row.rec["query_image"].values())
    ):
        raise Skip("no query image (text-only question)")
    sid = row.text(["sample_id"], "id")
    question = row.text(["query"], "question")
    gold = row.text(["gt_answer"], "answer")
    others = _answer_list(row, "alternative_gt_answers", row.rec.get("alternative_gt_answers"))
    img = row.image("query_image", row.rec["query_image"])
    extra = _meta(row.rec, ["area", "subfield", "timestamp", "gt_requery"])
    return Sample(sid, question, [img], _answers(gold, others), source or "mmsearch", extra_info=extra)


def _simplevqa(row: _Row, source: str | None) -> Sample:
    lang = row.rec.get("language")
    if lang is not None and str(lang).strip().lower() not in ("en", "english"):
        raise Skip(f"language {lang!s} (English only)")
    sid = row.text(["data_id", "id"], "id")
    question = row.text(["question"], "question")
    key, answer = row.first(["answer"], what="answer")
    answers = _answer_list(row, key, answer)
    if not answers:
        raise row.err("answer", "no answer text")
    key, image = row.first(["image", "image_path", "images"], what="image")
    img = row.image(key, image)
    extra = _meta(row.rec, ["original_category", "vqa_category", "source", "language"])
    return Sample(
        sid, question, [img], _answers(answers[0], answers[1:]), source or "simplevqa", extra_info=extra
    )


def _livevqa(row: _Row, source: str | None) -> Sample:
    sid = row.text(["id", "sample_id", "question_id"], "id")
    question = row.text(["question", "query"], "question")
    key, answer = row.first(["answer", "gt_answer"], what="answer")
    answers = _answer_list(row, key, answer)
    if not answers:
        raise row.err(key, "no answer text")
    for k in ("candidates", "alternative_answers", "answers"):
        answers += _answer_list(row, k, row.rec.get(k))
    key, image = row.first(["image", "image_path", "img_path", "images"], what="image")
    img = row.image(key, image)
    extra = _meta(row.rec, ["topic", "category", "level", "source", "url", "timestamp"])
    return Sample(
        sid, question, [img], _answers(answers[0], answers[1:]), source or "livevqa", extra_info=extra
    )


# ------------------------------------------------------------------------------------------------ driver
def convert(
    fmt: str,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    images_dir: str | Path | None = None,
    data_source: str | None = None,
    limit: int | None = None,
    skip_bad_rows: bool = False,
) -> ConvertReport:
    """Convert `inputs` of benchmark `fmt` to the parquet `out` (see the module docstring)."""
    from mmsearch_r1.data.writer import write_samples

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if not inputs:
        raise ValueError("no input files")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    idir = Path(images_dir) if images_dir is not None else None
    if idir is not None and not idir.is_dir():
        raise FileNotFoundError(f"--images-dir {idir}: not a directory")
    infoseek_images = _InfoSeekImages(idir)
    mappers: dict[str, Callable[[_Row], Sample]] = {
        "fvqa": lambda r: _fvqa(r, data_source),
        "infoseek": lambda r: _infoseek(r, data_source, infoseek_images),
        "mmsearch": lambda r: _mmsearch(r, data_source),
        "simplevqa": lambda r: _simplevqa(r, data_source),
        "livevqa": lambda r: _livevqa(r, data_source),
    }
    report = ConvertReport()
    samples: list[Sample] = []
    seen: dict[str, str] = {}
    for path in inputs:
        for index, rec in iter_records(path):
            if limit is not None and len(samples) >= limit:
                break
            report.read += 1
            row = _Row(rec, str(path), index, idir)
            try:
                sample = mappers[fmt](row)
                if sample.id in seen:
                    raise row.err("id", f"duplicate id {sample.id!r} (first seen at {seen[sample.id]})")
            except Skip as e:
                report.skipped[str(e)] += 1
                continue
            except DataError as e:
                if not skip_bad_rows:
                    raise
                report.skipped["bad row"] += 1
                report.errors.append(str(e))
                continue
            seen[sample.id] = f"{path} row {index}"
            samples.append(sample)
    if not samples:
        raise ValueError(f"no samples to write from {', '.join(map(str, inputs))} ({report.to_json()})")
    write_samples(samples, out)
    report.written = len(samples)
    return report
