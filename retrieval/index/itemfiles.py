"""A bundle's per-item data in files of its own: columnar JSON segments, appended without rewriting.

DESIGN.md, "Bundle format". Each write that adds items adds one segment ``items-<k>.json`` (k = 000000,
000001, ...) holding the rows it added, column by column::

    {"format": "dgmrec-items", "version": 1, "first_row": 120, "rows": 30,
     "columns": {"text": [...30 values], "image": [...], "attributes": [...]}}

meta.json lists the segments in row order (``item_files``) and the column names (``item_columns``). An
append writes only its new segment; the earlier segments, like the bundle's other unchanged files, are
hard links into the new version folder (a copy where the file system has none), so the rows already
stored are neither read nor rewritten. Files are never changed once written, so a link is as safe as a
copy. Values are plain JSON (read with ``json.loads``: nothing is unpickled or executed). Bundles written
before kept the same columns inside meta.json's ``extra`` (``retrieval.index.info.BuildInfo.read``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from dgmrec_core.errors import DataError
from retrieval.index.storage import IndexMismatch

Columns = dict[str, list[Any]]  # column name -> one JSON value per item, in bundle row order
ITEM_FILE = re.compile(r"^items-\d{6}\.json$")
_FORMAT = {"format": "dgmrec-items", "version": 1}


def segment_name(k: int) -> str:
    return f"items-{k:06d}.json"


def check_columns(folder: Path, columns: Columns, n: int, names: list[str] | None = None) -> Columns:
    """``columns`` as lists of ``n`` JSON values each (``names``: the columns the bundle already has)."""
    if not columns:
        raise DataError(folder, "item data has no columns", field="items")
    if names is not None and sorted(columns) != sorted(names):
        raise DataError(folder, f"item columns {sorted(columns)} differ from the bundle's {sorted(names)}",
                        field="items")
    out = {str(name): list(values) for name, values in columns.items()}
    for name, values in out.items():
        if len(values) != n:
            raise DataError(folder, f"item column {name!r} has {len(values)} values for {n} items", field="items")
    try:
        json.dumps(out)
    except (TypeError, ValueError) as exc:
        raise DataError(folder, f"item data must be JSON-serialisable ({exc})", field="items") from exc
    return out


def write_segment(folder: Path, name: str, first_row: int, columns: Columns) -> None:
    """Write one segment (into a version folder being filled, so no other reader sees it half written)."""
    rows = len(next(iter(columns.values())))
    text = json.dumps({**_FORMAT, "first_row": first_row, "rows": rows, "columns": columns}, separators=(",", ":"))
    (folder / name).write_text(text)


def read_segments(name: Path, folder: Path, files: list[str], n: int) -> Columns:
    """The columns of ``files`` (a bundle's ``item_files``), checked to cover rows 0 .. ``n``-1 in order."""
    out: Columns = {}
    for file in files:
        try:
            segment = json.loads((folder / file).read_text())
        except (OSError, ValueError) as exc:
            raise IndexMismatch(name, f"{file} is not readable JSON ({exc})") from exc
        problem = _segment_problem(segment, first_row=len(next(iter(out.values()), [])), names=list(out) or None)
        if problem:
            raise IndexMismatch(name, f"{file}: {problem}")
        for column, values in segment["columns"].items():
            out.setdefault(column, []).extend(values)
    rows = len(next(iter(out.values()), []))
    if rows != n:
        raise IndexMismatch(name, f"item files hold {rows} rows but meta.json lists {n} items")
    return out


def _segment_problem(segment: Any, *, first_row: int, names: list[str] | None) -> str | None:
    if not isinstance(segment, dict) or any(segment.get(k) != v for k, v in _FORMAT.items()):
        return f"not an item segment of version {_FORMAT['version']}"
    columns, rows = segment.get("columns"), segment.get("rows")
    if not isinstance(columns, dict) or not columns or not isinstance(rows, int):
        return "lacks its columns or row count"
    if segment.get("first_row") != first_row:
        return f"starts at row {segment.get('first_row')}, expected {first_row}"
    if names is not None and sorted(columns) != sorted(names):
        return f"columns {sorted(columns)} differ from the earlier segments' {sorted(names)}"
    if any(not isinstance(v, list) or len(v) != rows for v in columns.values()):
        return f"a column does not hold {rows} values"
    return None


def link_or_copy(source: Path, target: Path) -> None:
    """Put an unchanged file of the previous version into the new one: a hard link, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
