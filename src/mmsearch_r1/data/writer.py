"""Write `Sample` records as parquet in the released schema (round-trips through `read_samples`).

`prompt` holds one user message whose content is `<image>` placeholders (one per image) followed by the question;
`candidate_answers` is written as a JSON string, `image_urls` as a JSON list string (or null), `extra_info` as a
JSON string (the reader accepts structs too).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from mmsearch_r1.types import Sample


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
            ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
            (
                "reward_model",
                pa.struct(
                    [
                        ("ground_truth", pa.string()),
                        ("candidate_answers", pa.string()),
                        ("style", pa.string()),
                    ]
                ),
            ),
            ("data_source", pa.string()),
            ("image_urls", pa.string()),
            ("data_id", pa.string()),
            ("category", pa.string()),
            ("extra_info", pa.string()),
        ]
    )


def sample_to_row(s: Sample) -> dict:
    images = []
    for im in s.images:
        data = im.bytes
        if data is None and im.path:
            data = Path(im.path).read_bytes()
        images.append({"bytes": data, "path": im.path})
    return {
        "prompt": [{"role": "user", "content": "<image>" * len(s.images) + s.question}],
        "images": images,
        "reward_model": {
            "ground_truth": s.answers.ground_truth,
            "candidate_answers": json.dumps(list(s.answers.candidates), ensure_ascii=False),
            "style": "rule",
        },
        "data_source": s.data_source,
        "image_urls": json.dumps(s.image_urls) if s.image_urls else None,
        "data_id": s.id,
        "category": s.category,
        "extra_info": json.dumps(s.extra_info, ensure_ascii=False, sort_keys=True) if s.extra_info else None,
    }


def write_samples(samples: Iterable[Sample], path: str | Path, row_group_size: int = 256) -> Path:
    """Write samples to `path` (parent directories created). Returns the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    rows = [sample_to_row(s) for s in samples]
    table = pa.Table.from_pylist(rows, schema=_schema())
    pq.write_table(table, str(p), row_group_size=row_group_size)
    return p
