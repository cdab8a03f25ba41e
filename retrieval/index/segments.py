"""A bundle's rows in segments: which files hold each segment, the item ids and generated flags, and the
segments' arrays read as one.

Segment 0 holds the rows of the build (or of the last compaction), and each append adds one segment with
its rows only. Segment k's files carry the suffix ``-<k:06d>`` (none for segment 0, so a bundle of
format 1 is a bundle of one segment): ``<modality>.faiss`` and ``fused.faiss`` (a segment file of
``retrieval.index.deltas``; "ivfpq" also ``<file>.vectors.npy``), ``features_<modality>.npy``, ``items.npy``
and ``ids.json``: the segment's item ids and per modality its generated flags,
``{"format": "dgmrec-ids", "version": 1, "first_row": R, "rows": N, "item_ids": [N strings],
"generated": {"<modality>": "0110..."}}`` (one character per row). meta.json (format 2) lists the row
count of each segment (``segments``), so its size does not grow with the items. Format 1 kept
``item_ids`` and ``generated`` in meta.json; such a bundle is read as one segment and gets its
``ids.json`` on its next append.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgmrec_core.errors import DataError
from retrieval import defaults
from retrieval.index.compressed import sidecar
from retrieval.index.storage import META, IndexMismatch
from retrieval.index.vectors import VectorIndex

FUSED = "fused"
MAX_SEGMENTS = defaults.MAX_SEGMENTS  # an append that would make more segments than this compacts the bundle
IDS_FILE = re.compile(r"^ids(-\d{6})?\.json$")
SEGMENT_SUFFIX = re.compile(r"-\d{6}$")  # no modality name may end like this (its files would clash)
_FORMAT = {"format": "dgmrec-ids", "version": 1}
_COPY_ROWS = 100_000  # rows copied per step when segments are joined


def suffix(k: int) -> str:
    return "" if k == 0 else f"-{k:06d}"


def index_file(key: str, k: int) -> str:
    return f"{key}{suffix(k)}.faiss"


def features_file(modality: str, k: int) -> str:
    return f"features_{modality}{suffix(k)}.npy"


def fused_file(k: int) -> str:
    return f"items{suffix(k)}.npy"


def ids_file(k: int) -> str:
    return f"ids{suffix(k)}.json"


def segment_rows(meta: dict) -> list[int]:
    """The row count of each segment (format 1: one segment of every item)."""
    return list(meta["segments"]) if meta["format_version"] >= 2 else [len(meta["item_ids"])]


def segment_files(meta: dict, k: int) -> list[str]:
    """The files of segment ``k``: indexes (and "ivfpq" full vectors), features, fused items, ids (format 2)."""
    out = []
    kinds = meta.get("index_kinds") if isinstance(meta.get("index_kinds"), dict) else {}
    for key in [*meta["modalities"], FUSED]:
        out.append(index_file(key, k))
        if kinds.get(key) == "ivfpq":
            out.append(sidecar(Path(index_file(key, k))).name)
    out += [*(features_file(m, k) for m in meta["modalities"]), fused_file(k)]
    return out + ([ids_file(k)] if meta["format_version"] >= 2 else [])


def bundle_files(meta: dict) -> list[str]:
    """Every file meta.json describes (but meta.json and its hash)."""
    out = [name for k in range(len(segment_rows(meta))) for name in segment_files(meta, k)]
    return out + [*(f"extra_{key}.npy" for key in meta["extra_arrays"]), *meta.get("files", ()),
                  *meta.get("item_files", ())]


def load_indexes(name: Path, folder: Path, meta: dict) -> dict[str, VectorIndex]:
    """Every index of a version folder, its segments merged in, checked against meta.json's rows and dims."""
    rows = segment_rows(meta)
    dims = {**meta["dims"], FUSED: meta["fused_dim"]}
    where = "" if len(rows) == 1 else " in that segment"
    indexes = {}
    for key in [*meta["modalities"], FUSED]:
        try:
            index = VectorIndex.load(folder / index_file(key, 0))
            got = [index.ntotal]
            got += [index.merge_segment(folder / index_file(key, k)) for k in range(1, len(rows))]
        except DataError as exc:
            raise IndexMismatch(name, f"{Path(exc.path or '').name}: {exc.problem}") from exc
        for k, (n, expected) in enumerate(zip(got, rows)):
            if n != expected:
                raise IndexMismatch(name, f"{index_file(key, k)} has {n} rows but {META} lists {expected} "
                                          f"items{where}")
        if index.dim != dims[key]:
            raise IndexMismatch(name, f"{key}.faiss has dimension {index.dim}, {META} says {dims[key]}")
        indexes[key] = index
    return indexes


def check_arrays(name: Path, folder: Path, meta: dict) -> None:
    """Each segment's features and fused items are readable arrays of its rows and the bundle's widths."""
    for k, n in enumerate(segment_rows(meta)):
        for file, width in [*((features_file(m, k), meta["dims"][m]) for m in meta["modalities"]),
                            (fused_file(k), meta["fused_dim"])]:
            try:
                shape = np.load(folder / file, mmap_mode="r").shape
            except (OSError, ValueError, EOFError) as exc:
                raise IndexMismatch(name, f"{file} is not a readable array ({exc})") from exc
            if shape != (n, width):
                raise IndexMismatch(name, f"{file} has shape {shape}, expected {(n, width)}")


@dataclass
class RowTable:
    """The item id and per-modality generated flag of every row, and the row count of each segment."""

    ids: list[str]
    generated: dict[str, np.ndarray]
    segments: list[int]

    def __len__(self) -> int:
        return len(self.ids)

    def extended(self, ids: list[str], flags: dict[str, np.ndarray]) -> "RowTable":
        """This table with one more segment of rows."""
        return RowTable(self.ids + ids, {m: np.concatenate([g, flags[m]]) for m, g in self.generated.items()},
                        [*self.segments, len(ids)])

    def joined(self) -> "RowTable":
        """The same rows as one segment."""
        return RowTable(self.ids, self.generated, [len(self.ids)])

    def write(self, folder: Path, k: int) -> None:
        """Write segment ``k``'s ids file into ``folder`` (a version folder being filled)."""
        start = sum(self.segments[:k])
        stop = start + self.segments[k]
        flags = {m: (g[start:stop].astype(np.uint8) + ord("0")).tobytes().decode("ascii")
                 for m, g in self.generated.items()}
        text = json.dumps({**_FORMAT, "first_row": start, "rows": stop - start, "item_ids": self.ids[start:stop],
                           "generated": flags}, separators=(",", ":"))
        with open(folder / ids_file(k), "x") as f:  # a new file, never one linked from the previous version
            f.write(text)

    @classmethod
    def read(cls, name: Path, folder: Path, meta: dict) -> "RowTable":
        """A bundle's rows: meta.json's lists (format 1) or its ids files (format 2), checked."""
        modalities = list(meta["modalities"])
        if meta["format_version"] < 2:
            return cls(list(meta["item_ids"]), {m: np.asarray(meta["generated"][m], dtype=bool) for m in modalities},
                       segment_rows(meta))
        ids: list[str] = []
        flags: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
        seen: set[str] = set()
        for k, rows in enumerate(meta["segments"]):
            file = ids_file(k)
            segment = _read_ids(name, folder / file, first_row=len(ids), rows=rows, modalities=modalities)
            seen.update(segment["item_ids"])
            if len(seen) != len(ids) + rows:
                raise IndexMismatch(name, f"{file}: an item id repeats one of this or an earlier segment")
            ids += segment["item_ids"]
            for m in modalities:
                flags[m].append(np.frombuffer(segment["generated"][m].encode("ascii"), np.uint8) == ord("1"))
        return cls(ids, {m: np.concatenate(f) if f else np.zeros(0, bool) for m, f in flags.items()},
                   list(meta["segments"]))


def _read_ids(name: Path, path: Path, *, first_row: int, rows: int, modalities: list[str]) -> dict:
    try:
        segment = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IndexMismatch(name, f"{path.name} is not readable JSON ({exc})") from exc
    problem = _ids_problem(segment, first_row, rows, modalities)
    if problem:
        raise IndexMismatch(name, f"{path.name}: {problem}")
    return segment


def _ids_problem(segment: Any, first_row: int, rows: int, modalities: list[str]) -> str | None:
    if not isinstance(segment, dict) or any(segment.get(k) != v for k, v in _FORMAT.items()):
        return f"not an ids file of version {_FORMAT['version']}"
    if segment.get("first_row") != first_row or segment.get("rows") != rows:
        return (f"holds rows {segment.get('first_row')} + {segment.get('rows')}, {META} says {first_row} + "
                f"{rows}")
    ids, flags = segment.get("item_ids"), segment.get("generated")
    if not isinstance(ids, list) or len(ids) != rows or not all(isinstance(i, str) for i in ids):
        return f"item_ids must be {rows} strings"
    if not isinstance(flags, dict) or sorted(flags) != sorted(modalities):
        return f"generated flags must be given for {', '.join(modalities)}"
    for m, value in flags.items():
        if not isinstance(value, str) or len(value) != rows or value.strip("01"):
            return f"generated flags of {m!r} must be {rows} characters 0 or 1"
    return None


class SegmentedRows:
    """The rows of several 2-D ``.npy`` files (memory maps) read as one array: ``shape``, ``len``, and
    indexing by a row, a slice or an array of rows (or a mask), optionally followed by column indices;
    ``np.asarray`` joins them all. ``IndexBundle.features`` returns one for a bundle of several segments."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        self._parts = parts
        self._starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self._starts[-1]), *parts[0].shape[1:])
        self.dtype = parts[0].dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.concatenate([np.asarray(p) for p in self._parts])
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            rows = self[key[0]]
            return rows[key[1:]] if rows.ndim == self.ndim - 1 else rows[(slice(None), *key[1:])]
        if isinstance(key, (int, np.integer)):
            return self.take(np.array([key]))[0]
        if isinstance(key, slice):
            return self.take(np.arange(*key.indices(len(self))))
        key = np.asarray(key)
        return self.take(np.flatnonzero(key) if key.dtype == bool else key)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows ``rows`` (1-D integers; negative ones count from the end), as one array."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        rows = np.where(rows < 0, rows + len(self), rows)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row out of range for {len(self)} rows")
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        part = np.searchsorted(self._starts, rows, side="right") - 1
        for p in np.unique(part):
            pick = part == p
            out[pick] = self._parts[p][rows[pick] - self._starts[p]]
        return out


def open_rows(folder: Path, files: list[str]) -> np.ndarray | SegmentedRows:
    """The ``.npy`` files ``files`` of a version folder as one array: a memory map when there is one file."""
    parts = [np.load(folder / f, mmap_mode="r") for f in files]
    return parts[0] if len(parts) == 1 else SegmentedRows(parts)


def join_npy(parts: list[np.ndarray], target: Path) -> None:
    """Write the rows of ``parts`` (memory maps or arrays, one after another) to ``target`` as float32,
    in steps of ``_COPY_ROWS`` rows, so the whole array is never in memory."""
    width, total = parts[0].shape[1], sum(len(p) for p in parts)
    if total == 0:  # a memory map cannot be empty
        np.save(target, np.zeros((0, width), np.float32))
        return
    out = np.lib.format.open_memmap(target, mode="w+", dtype=np.float32, shape=(total, width))
    at = 0
    for part in parts:
        for s in range(0, len(part), _COPY_ROWS):
            block = part[s:s + _COPY_ROWS]
            out[at:at + len(block)] = block
            at += len(block)
    out.flush()
    del out
