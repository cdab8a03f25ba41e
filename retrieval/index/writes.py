"""What each bundle write puts into the version folder ``storage.write_bundle`` is filling.

A build writes every file. An append (``write_append``) hard-links every file of the previous version
into the new one (a copy where the file system has none) and writes only its own segment
(``retrieval.index.segments``): one index segment per index, its rows of features, fused items, ids and
generated flags, and its item file; the records of the linked files are carried over from the previous
meta.json instead of hashing them again. So an append writes and hashes bytes in proportion to the rows
it adds (and meta.json, whose size does not grow with the items). A compaction (``write_compacted``)
rewrites every segment into one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.index.itemfiles import Columns, link_or_copy, segment_name, write_segment
from retrieval.index.segments import (RowTable, bundle_files, features_file, fused_file, index_file, join_npy,
                                      segment_rows)
from retrieval.index.storage import Records
from retrieval.index.vectors import VectorIndex

ItemSegments = list[tuple[str, int, Columns]]  # item files to write: (name, first row, columns)


@dataclass
class NewRows:
    """The rows a write adds: each modality's completed features and the fused item vectors."""

    vectors: dict[str, np.ndarray]
    fused: np.ndarray


def save_arrays(tmp: Path, k: int, rows: NewRows) -> None:
    """Write segment ``k``'s features and fused items (float32), as new files (never into a linked one)."""
    for name, v in [*((features_file(m, k), v) for m, v in rows.vectors.items()), (fused_file(k), rows.fused)]:
        with open(tmp / name, "xb") as f:
            np.save(f, np.ascontiguousarray(v, dtype=np.float32))


def link_files(source: Path, tmp: Path, names: list[str], records: Records) -> Records:
    """Link ``names`` from the previous version folder ``source``; return their recorded checksums."""
    for name in names:
        link_or_copy(source / name, tmp / name)
    return {name: records[name] for name in names if name in records}


def write_append(tmp: Path, *, source: Path, previous: dict, indexes: dict[str, VectorIndex], rows: RowTable,
                 new: NewRows | None, items: ItemSegments) -> Records:
    """An append: the previous version's files linked, then the new segment (when ``new`` has rows) and item
    files written. A bundle of format 1 also gets the ids file of its rows so far (segment 0)."""
    records = previous.get("checksums") or {}
    carried = link_files(source, tmp, sorted({*bundle_files(previous), *records}), records)
    if previous["format_version"] < 2:
        rows.write(tmp, 0)
    if new is not None:
        k = len(rows.segments) - 1
        for key, index in indexes.items():
            index.save_segment(tmp / index_file(key, k))
        save_arrays(tmp, k, new)
        rows.write(tmp, k)
    for name, first_row, columns in items:
        write_segment(tmp, name, first_row, columns)
    return carried


def write_compacted(tmp: Path, *, source: Path, previous: dict, indexes: dict[str, VectorIndex], rows: RowTable,
                    new: NewRows | None, items: Columns | None) -> Records:
    """Every segment (and ``new``) rewritten as one: whole indexes, joined arrays (copied in steps, never
    whole in memory), one ids file and one item file (``items``: all the item columns, or None)."""
    carried = link_files(source, tmp, [*(f"extra_{key}.npy" for key in previous["extra_arrays"]),
                                       *previous.get("files", ())], previous.get("checksums") or {})
    for key, index in indexes.items():
        index.save(tmp / index_file(key, 0))
    done = range(len(segment_rows(previous)))
    for m in previous["modalities"]:
        parts = [np.load(source / features_file(m, k), mmap_mode="r") for k in done]
        join_npy(parts + ([new.vectors[m]] if new is not None else []), tmp / features_file(m, 0))
    parts = [np.load(source / fused_file(k), mmap_mode="r") for k in done]
    join_npy(parts + ([new.fused] if new is not None else []), tmp / fused_file(0))
    rows.write(tmp, 0)
    if items is not None:
        write_segment(tmp, segment_name(0), 0, items)
    return carried
