"""Errors raised on bad input: each names the file (and row or field) at fault."""
from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data. The message names the file and, where known, the row or field."""

    def __init__(self, path: str | Path | None, problem: str, *, row: int | None = None,
                 field: str | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.row = row
        self.field = field
        where = self.path or "<input>"
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")
