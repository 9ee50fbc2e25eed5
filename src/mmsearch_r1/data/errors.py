"""Errors of the data layer: every one names the file, the row and the field."""

from __future__ import annotations


class DataError(ValueError):
    """A broken row: `file`, `row` (0-based, within the file) and `field` say where."""

    def __init__(self, file: str, row: int | None, field: str | None, message: str) -> None:
        self.file = file
        self.row = row
        self.field = field
        self.detail = message
        where = file
        if row is not None:
            where += f" row {row}"
        if field is not None:
            where += f" field {field!r}"
        super().__init__(f"{where}: {message}")
