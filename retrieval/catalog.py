"""Catalog ingestion: items with a text, an image, both or neither, from CSV/TSV, JSONL or Parquet.

Everything is validated before anything is returned. Row numbers are the line numbers a user sees in
the file: for CSV/TSV the header is line 1, for JSONL the first line is line 1.

With ``skip_bad=False`` every problem is collected and raised as one :class:`DataError`. With
``skip_bad=True`` bad rows are dropped and reported as :class:`Problem` values. A bad image (missing,
outside the catalog file's folder, unreadable, corrupt, too large) never drops its item: the item stays
and its image becomes missing (``Problem.skipped == "image"``), since DGMRec generates missing
modalities anyway.
"""
from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from tqdm import tqdm

from dgmrec_core.cpus import available_cpus
from dgmrec_core.errors import DataError
from dgmrec_core.parquet import is_parquet, read_parquet
from retrieval.images import image_problem

REQUIRED_COLUMNS = ("item_id", "text", "image")
MAX_LISTED_PROBLEMS = 10
_PROGRESS_MIN_IMAGES = 200
_DECODE_THREADS = 4  # images decoded in parallel while a catalog is checked


@dataclass(frozen=True)
class Problem:
    """One bad catalog row: its line in the file, its item id (if known) and what is wrong.

    ``skipped`` says what ``skip_bad`` dropped: the whole ``"row"`` or only its ``"image"``.
    """

    row: int
    item_id: str | None
    reason: str
    skipped: Literal["row", "image"] = "row"

    def __str__(self) -> str:
        item = f" (item {self.item_id!r})" if self.item_id else ""
        return f"line {self.row}{item}: {self.reason}"


@dataclass
class Catalog:
    """Items in file order. ``image_paths`` are absolute; ``None`` marks a missing modality."""

    item_ids: list[str]
    texts: list[str | None]
    image_paths: list[Path | None]
    source: Path
    extra: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.extra:
            self.extra = [{} for _ in self.item_ids]
        sizes = {len(self.item_ids), len(self.texts), len(self.image_paths), len(self.extra)}
        if len(sizes) != 1:
            raise ValueError("Catalog fields item_ids, texts, image_paths and extra differ in length")

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def has_text(self) -> np.ndarray:
        """Bool array (n_items,): the item has a text."""
        return np.array([t is not None for t in self.texts], dtype=bool)

    @property
    def has_image(self) -> np.ndarray:
        """Bool array (n_items,): the item has an image."""
        return np.array([p is not None for p in self.image_paths], dtype=bool)

    @cached_property
    def index(self) -> dict[str, int]:
        """Item id -> position in the catalog."""
        return {item_id: i for i, item_id in enumerate(self.item_ids)}


@dataclass
class _Record:
    row: int
    item_id: str
    text: str | None
    image: str | None
    extra: dict[str, Any]


def _raise_problems(path: Path, problems: list[Problem]) -> None:
    """Raise one DataError listing the first problems in full plus a count of the rest."""
    if not problems:
        return
    shown = "\n".join(f"  {p}" for p in problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    err = DataError(path, f"{len(problems)} bad row(s):\n{shown}{tail}")
    err.row = problems[0].row
    raise err


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot read file: {e.strerror or e}") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(path, f"not UTF-8 text ({e.reason})", row=data[:e.start].count(b"\n") + 1) from e


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Yield (start line, fields) for each non-blank CSV record."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter)
    prev_end = 0
    try:
        for fields in reader:
            start, prev_end = prev_end + 1, reader.line_num
            if len(fields) > 1 or (fields and fields[0].strip()):  # skip blank lines only
                yield start, fields
    except csv.Error as e:
        raise DataError(path, f"malformed CSV: {e}", row=reader.line_num) from e


def _csv_header(path: Path, header: list[str], required: tuple[str, ...]) -> list[str]:
    """Strip a CSV header and check it has the ``required`` columns and no duplicates."""
    names = [h.strip() for h in header]
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(path, f"missing required column(s) {', '.join(map(repr, missing))}; "
                              f"found {', '.join(map(repr, names))}", row=1)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(path, f"duplicate column(s) {', '.join(map(repr, dupes))}", row=1)
    return names


def _delimiter_for(path: Path) -> str:
    """Tab for .tsv files, comma otherwise."""
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _parse_csv(path: Path) -> tuple[list[_Record], list[Problem]]:
    rows = _csv_rows(path, _delimiter_for(path))
    first = next(rows, None)
    if first is None:
        raise DataError(path, "empty file: expected a header with columns " + ", ".join(REQUIRED_COLUMNS))
    names = _csv_header(path, first[1], REQUIRED_COLUMNS)
    records, problems = [], []
    for line, fields in rows:
        if len(fields) != len(names):
            item_id = fields[names.index("item_id")].strip() if len(fields) > names.index("item_id") else None
            problems.append(Problem(line, item_id or None,
                                    f"has {len(fields)} fields but the header has {len(names)}"))
            continue
        values = dict(zip(names, fields))
        extra = {k: v for k, v in values.items() if k not in REQUIRED_COLUMNS}
        records.append(_Record(line, values["item_id"].strip(), values["text"], values["image"], extra))
    return records, problems


def _parse_jsonl(path: Path) -> tuple[list[_Record], list[Problem]]:
    records, problems = [], []
    for line, raw in enumerate(_read_text(path).split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            problems.append(Problem(line, None, f"malformed JSON: {e.msg} (column {e.colno})"))
            continue
        if not isinstance(obj, dict):
            problems.append(Problem(line, None, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        record = _object_record(line, obj)
        (records if isinstance(record, _Record) else problems).append(record)
    return records, problems


def _object_record(line: int, obj: dict[str, Any]) -> _Record | Problem:
    """One JSONL object or Parquet row as a record, or the problem with it."""
    item_id = obj.get("item_id")
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)
    if item_id is not None and not isinstance(item_id, str):
        return Problem(line, None, "field 'item_id' must be a string or an integer")
    item_id = (item_id or "").strip()
    bad = [k for k in ("text", "image") if obj.get(k) is not None and not isinstance(obj[k], str)]
    if bad:
        return Problem(line, item_id or None, f"field '{bad[0]}' must be a string or null")
    extra = {k: v for k, v in obj.items() if k not in REQUIRED_COLUMNS}
    return _Record(line, item_id, obj.get("text"), obj.get("image"), extra)


def _parse_parquet(path: Path) -> tuple[list[_Record], list[Problem]]:
    """Parquet rows as records; rows are numbered from 2, as if the table had a header line like a CSV file."""
    columns, rows = read_parquet(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DataError(path, f"missing required column(s) {', '.join(map(repr, missing))}; "
                              f"found {', '.join(map(repr, columns))}")
    records, problems = [], []
    for n, row in enumerate(rows, start=2):
        record = _object_record(n, row)
        (records if isinstance(record, _Record) else problems).append(record)
    return records, problems


def _outside(path: Path, base: Path) -> str | None:
    """Why ``path`` (resolved, links followed) may not be a catalog image: it lies outside ``base``."""
    if path.is_relative_to(base):
        return None
    return (f"image path resolves outside the catalog's folder {base} (to {path}); images must be inside "
            "the folder of the catalog file")


def _image_problems(records: list[_Record], base: Path) -> tuple[list[Path | None], list[Problem]]:
    """Resolve image paths relative to ``base`` (links followed); return them (None when bad or empty) and
    the problems. A path that resolves outside ``base`` is a problem, never opened."""
    base = base.resolve()
    wanted = [(base / rec.image.strip()).resolve() if rec.image and rec.image.strip() else None for rec in records]
    outside = {i: _outside(p, base) for i, p in enumerate(wanted) if p is not None}
    todo = [p for i, p in enumerate(wanted) if p is not None and outside[i] is None]
    workers = min(_DECODE_THREADS, available_cpus())
    with warnings.catch_warnings(), ThreadPoolExecutor(workers) as pool:  # PIL decodes without the GIL
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # image_problem reports those images
        reasons = iter(list(tqdm(pool.map(image_problem, todo), total=len(todo), desc="decoding images", unit="img",
                                 leave=False, disable=len(todo) < _PROGRESS_MIN_IMAGES)))
    paths: list[Path | None] = []
    problems: list[Problem] = []
    for i, (rec, path) in enumerate(zip(records, wanted)):
        reason = None if path is None else outside[i] or next(reasons)
        if reason:
            problems.append(Problem(rec.row, rec.item_id, reason, skipped="image"))
        paths.append(None if reason else path)
    return paths, problems


def load_catalog(path: str | Path, *, skip_bad: bool = False) -> tuple[Catalog, list[Problem]]:
    """Load and validate a catalog (.csv, .tsv, .jsonl or .parquet) with ``item_id``, ``text``, ``image``.

    Empty ``text``/``image`` values mean a missing modality; other columns land in ``extra``.
    Raises DataError listing every problem unless ``skip_bad``, in which case bad rows are dropped,
    bad images are dropped from their (kept) items, and the problems are returned. Image paths are
    relative to the catalog file's folder and must resolve (links followed) inside it.
    """
    path = Path(path).resolve()
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        records, problems = _parse_jsonl(path)
    elif suffix in (".csv", ".tsv"):
        records, problems = _parse_csv(path)
    elif is_parquet(path):
        records, problems = _parse_parquet(path)
    else:
        raise DataError(path, "unknown catalog format: expected a .csv, .tsv, .jsonl or .parquet file")

    kept: list[_Record] = []
    first_line: dict[str, int] = {}
    for rec in records:
        if not rec.item_id:
            problems.append(Problem(rec.row, None, "no item_id"))
        elif rec.item_id in first_line:
            problems.append(Problem(rec.row, rec.item_id,
                                    f"duplicate item_id (first on line {first_line[rec.item_id]})"))
        else:
            first_line[rec.item_id] = rec.row
            kept.append(rec)

    image_paths, image_problems = _image_problems(kept, path.parent)
    problems = sorted(problems + image_problems, key=lambda p: p.row)
    if not skip_bad:
        _raise_problems(path, problems)
    if not kept:
        raise DataError(path, "no valid items" if records or problems else "no items")

    texts = [rec.text if rec.text and rec.text.strip() else None for rec in kept]
    catalog = Catalog(item_ids=[rec.item_id for rec in kept], texts=texts, image_paths=image_paths,
                      source=path, extra=[rec.extra for rec in kept])
    return catalog, problems
