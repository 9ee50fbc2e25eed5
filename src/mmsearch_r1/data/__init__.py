"""Data layer (no torch): read/write the released parquet schema as `Sample` records, inspect files, and
convert released image-search caches safely."""

from mmsearch_r1.data.errors import DataError
from mmsearch_r1.data.reader import DatasetReadResult, iter_samples, read_many, read_samples, row_to_sample
from mmsearch_r1.data.writer import write_samples

__all__ = [
    "DataError",
    "DatasetReadResult",
    "iter_samples",
    "read_many",
    "read_samples",
    "row_to_sample",
    "write_samples",
]
