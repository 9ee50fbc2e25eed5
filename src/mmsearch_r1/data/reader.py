"""Read parquet files in the released (veRL-style) schema into `Sample` records.

Columns (see docs/data.md): `prompt` (list of chat messages `{role, content}`; the question is the text of the
first user message, with `<image>` placeholders removed), `images` (list of `{bytes, path}`), `reward_model`
(`{ground_truth, candidate_answers (JSON string or list), style}`), `data_source`, `image_urls` (str, list or
null), optional `data_id` (the sample id; else `<data_source>-<row>`), `category`, `extra_info`.

Images stay encoded and decode lazily; `validate_images=True` opens each image's header (cheap) so a broken image
is reported with its row at read time. Files are read one row group at a time.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsearch_r1.data.errors import DataError
from mmsearch_r1.types import Answers, ImageData, Sample

REQUIRED_COLUMNS = ("prompt", "images", "reward_model")
IMAGE_PLACEHOLDER = "<image>"


@dataclass
class DatasetReadResult:
    samples: list[Sample] = field(default_factory=list)
    skipped: list[DataError] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


def _question(prompt: Any, err) -> str:
    if isinstance(prompt, str):
        try:
            prompt = json.loads(prompt)
        except json.JSONDecodeError:
            raise err("prompt", "not a list of chat messages (a string that is not JSON)") from None
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise err("prompt", "must be a non-empty list of chat messages {role, content}")
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise err(f"prompt[{i}]", "must be a message {role, content}")
    users = [m for m in prompt if m["role"] == "user"]
    if not users:
        raise err("prompt", "has no user message")
    content = users[0]["content"]
    if isinstance(content, (list, tuple)):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise err("prompt[user].content", f"must be text, got {type(content).__name__}")
    text = content.replace(IMAGE_PLACEHOLDER, "").strip()
    if not text:
        raise err("prompt[user].content", "the question is empty")
    return text


def _candidates(value: Any, err) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        s = value.strip()
        if not s:
            return []
        try:
            value = json.loads(s)
        except json.JSONDecodeError:
            raise err("reward_model.candidate_answers", "a string that is not a JSON list") from None
        if isinstance(value, str):
            return [value]
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise err(
            "reward_model.candidate_answers", f"must be a list or a JSON list, got {type(value).__name__}"
        )
    out = []
    for i, c in enumerate(value):
        if not isinstance(c, (str, int, float)):
            raise err(f"reward_model.candidate_answers[{i}]", f"must be text, got {type(c).__name__}")
        out.append(str(c))
    return out


def _answers(rm: Any, err) -> Answers:
    if isinstance(rm, str):
        try:
            rm = json.loads(rm)
        except json.JSONDecodeError:
            raise err("reward_model", "not a struct (a string that is not JSON)") from None
    if not isinstance(rm, dict):
        raise err("reward_model", "missing (no gold answer)" if rm is None else "must be a struct")
    gt = rm.get("ground_truth")
    if isinstance(gt, (list, tuple)) and gt:  # some datasets store a list of golds
        gt, extra = str(gt[0]), [str(x) for x in gt[1:]]
    else:
        extra = []
    if gt is None or (isinstance(gt, str) and not gt.strip()):
        raise err("reward_model.ground_truth", "missing answer")
    if not isinstance(gt, (str, int, float)):
        raise err("reward_model.ground_truth", f"must be text, got {type(gt).__name__}")
    cands = extra + _candidates(rm.get("candidate_answers"), err)
    return Answers(str(gt), [c for c in cands if c != str(gt)])


def _images(images: Any, err, validate: bool) -> list[ImageData]:
    if images is None:
        return []
    if hasattr(images, "tolist") and not isinstance(images, (bytes, str)):
        images = images.tolist()
    if not isinstance(images, (list, tuple)):
        raise err("images", f"must be a list of {{bytes, path}}, got {type(images).__name__}")
    out = []
    for i, im in enumerate(images):
        if isinstance(im, (bytes, bytearray)):
            im = {"bytes": bytes(im), "path": None}
        if not isinstance(im, dict):
            raise err(f"images[{i}]", f"must be a struct {{bytes, path}}, got {type(im).__name__}")
        data, path = im.get("bytes"), im.get("path")
        if data is None and not path:
            raise err(f"images[{i}]", "has neither bytes nor path")
        img = ImageData(bytes=bytes(data) if data is not None else None, path=path or None)
        if validate:
            _check_image(img, err, f"images[{i}]")
        out.append(img)
    return out


def _check_image(img: ImageData, err, where: str) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        src = io.BytesIO(img.bytes) if img.bytes is not None else img.path
        with Image.open(src) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # DecompressionBombError: the header claims more pixels than PIL's limit; a bad row like any other
        raise err(where, f"cannot decode image ({e.__class__.__name__}: {e})") from None


def _image_urls(value: Any, err) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                value = json.loads(s)
            except json.JSONDecodeError:
                raise err("image_urls", "a string that looks like a list but is not JSON") from None
        else:
            return [s] if s else None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(u, str) for u in value):
        raise err("image_urls", "must be a string, a list of strings or null")
    return list(value) or None


def _extra(value: Any, err) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise err("extra_info", "a string that is not JSON") from None
    if not isinstance(value, dict):
        raise err("extra_info", f"must be a struct, got {type(value).__name__}")
    return value


def row_to_sample(row: dict[str, Any], file: str, index: int, validate_images: bool = True) -> Sample:
    """One parquet row (as a dict) -> Sample, or DataError naming the field."""

    def err(fieldname: str, msg: str) -> DataError:
        return DataError(file, index, fieldname, msg)

    question = _question(row.get("prompt"), err)
    answers = _answers(row.get("reward_model"), err)
    images = _images(row.get("images"), err, validate_images)
    source = row.get("data_source") or "unknown"
    if not isinstance(source, str):
        raise err("data_source", f"must be a string, got {type(source).__name__}")
    sid = row.get("data_id")
    sid = str(sid) if sid not in (None, "") else f"{source}-{index}"
    category = row.get("category")
    if category is not None and not isinstance(category, str):
        raise err("category", f"must be a string or null, got {type(category).__name__}")
    return Sample(
        id=sid,
        question=question,
        images=images,
        answers=answers,
        data_source=source,
        category=category or None,
        image_urls=_image_urls(row.get("image_urls"), err),
        extra_info=_extra(row.get("extra_info"), err),
    )


def iter_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row index, row dict) of a parquet file, read one row group at a time."""
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}")
    try:
        pf = pq.ParquetFile(str(p))
    except Exception as e:  # pyarrow raises several types for a non-parquet file
        raise DataError(str(p), None, None, f"not a parquet file ({e})") from None
    names = set(pf.schema_arrow.names)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise DataError(str(p), None, missing[0], f"missing column (has: {', '.join(sorted(names))})")
    index = 0
    for g in range(pf.num_row_groups):
        for row in pf.read_row_group(g).to_pylist():
            yield index, row
            index += 1


def iter_samples(
    path: str | Path,
    *,
    skip_bad_rows: bool = False,
    validate_images: bool = True,
    skipped: list | None = None,
) -> Iterator[Sample]:
    """Samples of one file; bad rows raise DataError, or are skipped (and appended to `skipped`)."""
    for index, row in iter_rows(path):
        try:
            yield row_to_sample(row, str(path), index, validate_images)
        except DataError as e:
            if not skip_bad_rows:
                raise
            if skipped is not None:
                skipped.append(e)


def read_samples(
    path: str | Path, *, skip_bad_rows: bool = False, validate_images: bool = True
) -> DatasetReadResult:
    result = DatasetReadResult()
    result.samples = list(
        iter_samples(
            path, skip_bad_rows=skip_bad_rows, validate_images=validate_images, skipped=result.skipped
        )
    )
    return result


def read_many(
    paths: Sequence[str | Path], *, skip_bad_rows: bool = False, validate_images: bool = True
) -> DatasetReadResult:
    out = DatasetReadResult()
    for p in paths:
        r = read_samples(p, skip_bad_rows=skip_bad_rows, validate_images=validate_images)
        out.samples += r.samples
        out.skipped += r.skipped
    return out
