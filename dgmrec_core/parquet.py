"""Parquet tables (catalogs, interactions): read with pyarrow, or pandas where it has a Parquet engine.

Neither is a dependency of the project: ``pip install 'dgmrec-search[parquet]'`` (pyarrow) adds it, and
a Parquet file read without it is a ``DataError`` that says so.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from .errors import DataError

SUFFIXES = (".parquet", ".pq")
MISSING = ("reading Parquet files needs pyarrow, which is not installed: pip install 'dgmrec-search[parquet]' "
           "(or pip install pyarrow), or convert the file to CSV")


def is_parquet(path: str | Path) -> bool:
    return Path(path).suffix.lower() in SUFFIXES


def read_parquet(path: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Column names and rows (one dict per row, plain Python values, None where null) of a Parquet file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found" if not path.exists() else "not a regular file")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    if pq is not None:
        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types on files that are not Parquet
            raise DataError(path, f"not a readable Parquet file ({exc})") from exc
        return list(table.column_names), [{k: _plain(v) for k, v in row.items()} for row in table.to_pylist()]
    try:
        import pandas as pd
    except ImportError:
        raise DataError(path, MISSING) from None
    try:
        frame = pd.read_parquet(path)
    except ImportError:  # pandas without a Parquet engine
        raise DataError(path, MISSING) from None
    except Exception as exc:  # noqa: BLE001
        raise DataError(path, f"not a readable Parquet file ({exc})") from exc
    frame = frame.astype(object).where(frame.notna(), None)
    return [str(c) for c in frame.columns], [{str(k): _plain(v) for k, v in row.items()}
                                             for row in frame.to_dict("records")]


def _plain(value: Any) -> Any:
    """JSON-safe plain values: numbers, strings, booleans, None; dates as ISO text; anything else as text."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    item = getattr(value, "item", None)  # numpy / pandas scalars
    if callable(item):
        try:
            return _plain(item())
        except (TypeError, ValueError):
            pass
    return str(value)


def as_text(value: Any) -> str:
    """A cell as the text a CSV file would hold: '' for null, integral floats without '.0'."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
