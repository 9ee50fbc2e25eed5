"""Statistics of dataset files: rows, sources, categories, image sizes, question/answer lengths, bad rows."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmsearch_r1.data.errors import DataError
from mmsearch_r1.data.reader import iter_rows, row_to_sample


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"min": 0, "median": 0, "max": 0, "mean": 0}
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "mean": round(statistics.fmean(values), 2),
    }


def inspect_files(paths: Sequence[str | Path], max_errors: int = 5) -> dict[str, Any]:
    rows = 0
    sources: Counter = Counter()
    categories: Counter = Counter()
    widths, heights, n_images, q_len, a_len, n_cands = [], [], [], [], [], []
    bad: list[str] = []
    n_bad = 0
    for path in paths:
        for index, row in iter_rows(path):
            rows += 1
            try:
                s = row_to_sample(row, str(path), index, validate_images=True)
            except DataError as e:
                n_bad += 1
                if len(bad) < max_errors:
                    bad.append(str(e))
                continue
            try:  # verify() reads only the header and chunk checksums: the pixels may still not decode
                sizes = [im.load().size for im in s.images]
            except Exception as e:  # noqa: BLE001 - any decode failure makes this a bad row
                n_bad += 1
                if len(bad) < max_errors:
                    bad.append(
                        f"{path} row {index} field 'images': cannot decode image ({type(e).__name__}: {e})"
                    )
                continue
            sources[s.data_source] += 1
            categories[s.category or "(none)"] += 1
            n_images.append(len(s.images))
            for w, h in sizes:
                widths.append(w)
                heights.append(h)
            q_len.append(len(s.question))
            a_len.append(len(s.answers.ground_truth))
            n_cands.append(len(s.answers.candidates))
    return {
        "files": [str(p) for p in paths],
        "rows": rows,
        "good_rows": rows - n_bad,
        "bad_rows": n_bad,
        "bad_examples": bad,
        "data_sources": dict(sorted(sources.items())),
        "categories": dict(sorted(categories.items())),
        "images": {
            "total": sum(n_images),
            "per_row": _stats(n_images),
            "width": _stats(widths),
            "height": _stats(heights),
        },
        "question_chars": _stats(q_len),
        "answer_chars": _stats(a_len),
        "candidates_per_row": _stats(n_cands),
    }


def format_inspect(info: dict[str, Any]) -> str:
    lines = [
        f"files: {', '.join(info['files'])}",
        f"rows: {info['rows']} (good {info['good_rows']}, bad {info['bad_rows']})",
        "data sources:",
        *[f"  {k}: {v}" for k, v in info["data_sources"].items()],
        "categories:",
        *[f"  {k}: {v}" for k, v in info["categories"].items()],
    ]
    im = info["images"]
    lines.append(f"images: {im['total']} total, per row {im['per_row']}")
    lines.append(f"  width  {im['width']}")
    lines.append(f"  height {im['height']}")
    lines.append(f"question chars: {info['question_chars']}")
    lines.append(f"answer chars:   {info['answer_chars']}")
    lines.append(f"candidates/row: {info['candidates_per_row']}")
    if info["bad_examples"]:
        lines.append("first errors:")
        lines += [f"  {e}" for e in info["bad_examples"]]
    return "\n".join(lines)
