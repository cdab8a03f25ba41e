"""The index bundle: one cosine index per modality plus the fused index, with their features, as one folder.

``IndexBundle`` is the folder ``indexes/<name>/``: ``<modality>.faiss`` per modality (raw feature
space, every item present, generated rows flagged), ``fused.faiss`` over fused item embeddings for
recommendations, the completed features ``features_<modality>.npy``, the fused matrix ``items.npy``, the
item ids and generated flags ``ids.json``, ``meta.json`` (``retrieval.index.storage``: versions, lock,
checksums) and the per-item data in ``items-<k>.json`` (``retrieval.index.itemfiles``). Each append adds
one segment of these files holding only its rows (``retrieval.index.segments``, ``retrieval.index.writes``);
past ``MAX_SEGMENTS`` segments an append rewrites the bundle as one (``compact``).
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from dgmrec_core.atomic import sha256_file as _sha256
from dgmrec_core.errors import DataError
from dgmrec_core.jsonfiles import canonical
from retrieval.index import segments as _segments
from retrieval.index.itemfiles import Columns, check_columns, read_segments, segment_name, write_segment
from retrieval.index.payload import FUSED, check_new_ids, check_payload, files_to_copy, item_files, split_extra
from retrieval.index.segments import (RowTable, bundle_files, check_arrays, features_file, fused_file, index_file,
                                      load_indexes, open_rows)
from retrieval.index.storage import (FORMAT_VERSION, META, IndexMismatch, Records, check_sizes,
                                     current_bundle_version, read_meta, write_bundle)
from retrieval.index.vectors import VectorIndex
from retrieval.index.writes import ItemSegments, NewRows, save_arrays, write_append, write_compacted

log = logging.getLogger("dgmrec.index")


@dataclass(frozen=True)
class SearchHits:
    """Search results, one row per query: item rows (-1 = empty slot), cosine scores and generated flags."""

    rows: np.ndarray  # (q, k) int64
    scores: np.ndarray  # (q, k) float32, -inf on empty slots
    generated: np.ndarray  # (q, k) bool: the hit's vector in this index was generated, not observed


def _rows_array(rows: Any) -> np.ndarray:
    if isinstance(rows, np.ndarray):
        return rows.astype(np.int64, copy=False).ravel()
    return np.fromiter(rows, dtype=np.int64)


def _exclusion_sets(exclude_rows: Any, n_queries: int) -> list[np.ndarray]:
    """One int64 array of excluded rows per query: a flat collection of rows applies to every query,
    a collection of collections (or a 2-D array) gives one per query."""
    if exclude_rows is None:
        return [np.zeros(0, np.int64)] * n_queries
    if isinstance(exclude_rows, np.ndarray) and exclude_rows.ndim == 2:
        per_query = list(exclude_rows)
    elif isinstance(exclude_rows, np.ndarray) or all(isinstance(e, (int, np.integer)) for e in exclude_rows):
        return [_rows_array(exclude_rows)] * n_queries
    else:
        per_query = list(exclude_rows)
    if len(per_query) != n_queries:
        raise DataError(None, f"exclude_rows has {len(per_query)} row lists for {n_queries} queries")
    return [_rows_array(e) for e in per_query]


class IndexBundle:
    """The folder of per-modality indexes, the fused index, completed features, item ids and ``meta.json``."""

    def __init__(self, folder: Path, meta: dict, indexes: dict[str, VectorIndex], path: Path, rows: RowTable) -> None:
        self.folder = folder  # the bundle's name (a link to its current version)
        self.path = path  # the version folder this snapshot was read from
        self.indexes = indexes
        meta_file = self.path / META
        self._meta_sha = _sha256(meta_file) if meta_file.is_file() else None  # detects later writers
        self._set(meta, rows)

    def _set(self, meta: dict, rows: RowTable) -> None:
        self.meta = meta
        self._table = rows
        self.generated = rows.generated
        self._any_generated = np.any([self.generated[m] for m in meta["modalities"]], axis=0)
        self._rows: dict[str, int] | None = None
        self._item_columns: Columns | None = None

    # ------------------------------------------------------------------ accessors
    @property
    def item_ids(self) -> list[str]:
        return self._table.ids

    @property
    def segments(self) -> list[int]:
        """The row count of each segment (one per append since the build or the last compaction)."""
        return list(self._table.segments)

    @property
    def modalities(self) -> list[str]:
        return list(self.meta["modalities"])

    @property
    def dims(self) -> dict[str, int]:
        return dict(self.meta["dims"])

    @property
    def model_fingerprint(self) -> str:
        return self.meta["model_fingerprint"]

    @property
    def encoder_fingerprint(self) -> dict | str:
        return self.meta["encoder_fingerprint"]

    def __len__(self) -> int:
        return len(self.item_ids)

    def row_of(self, item_id: str) -> int:
        """Row (position) of ``item_id``; ``KeyError`` when it is not in the bundle."""
        if self._rows is None:
            self._rows = {item: row for row, item in enumerate(self.item_ids)}
        return self._rows[item_id]

    def features(self, modality: str) -> np.ndarray | _segments.SegmentedRows:
        """Completed raw features of ``modality`` (observed + generated rows), memory-mapped; over several
        segments a ``SegmentedRows`` (shape, slicing and row indexing like an array; ``np.asarray`` joins)."""
        if modality not in self.meta["modalities"]:
            raise KeyError(f"no modality {modality!r} in {self.folder} (has {', '.join(self.modalities)})")
        return open_rows(self.path, [features_file(modality, k) for k in range(len(self.segments))])

    def fused_items(self) -> np.ndarray | _segments.SegmentedRows:
        """Fused item embeddings (n, d_fused), memory-mapped (like ``features``)."""
        return open_rows(self.path, [fused_file(k) for k in range(len(self.segments))])

    @property
    def has_item_files(self) -> bool:
        """Whether the bundle stores per-item data in item files (bundles written before them do not)."""
        return bool(self.meta.get("item_files"))

    def item_columns(self) -> Columns | None:
        """The per-item data (column name -> one value per row) from the item files; None without them."""
        if self._item_columns is None and self.has_item_files:
            self._item_columns = read_segments(self.folder, self.path, self.meta["item_files"], len(self))
        return self._item_columns

    def extra_array(self, name: str) -> np.ndarray:
        """An extra array stored by ``build(extra={name: array})``."""
        if name not in self.meta["extra_arrays"]:
            raise KeyError(f"no extra array {name!r} in {self.folder}")
        return np.load(self.path / f"extra_{name}.npy")

    # ------------------------------------------------------------------ build / load
    @classmethod
    def build(cls, folder: str | Path, *, item_ids: Sequence[str], modality_vectors: dict[str, np.ndarray],
              generated: dict[str, np.ndarray], fused: np.ndarray, model_fingerprint: str,
              encoder_fingerprint: dict | str, kind: str = "auto", extra: dict | None = None,
              files: dict[str, str | Path] | None = None, items: Columns | None = None) -> "IndexBundle":
        """Build every index and write the bundle to ``folder`` atomically (replacing any old one).

        ``modality_vectors[m]`` are the completed features (n, d_m) of modality m, ``generated[m]`` (n,)
        flags the rows the model generated. ``extra`` values that are numpy arrays are stored as
        ``extra_<key>.npy``; the rest (JSON-serialisable) goes into ``meta.json`` under "extra".
        ``files`` (bundle file name -> source path, e.g. the model checkpoint) are copied in and kept by
        ``add_items``. ``items`` (column name -> one JSON value per item) is the per-item data, written
        as the first item file.
        """
        folder = Path(folder)
        ids = [str(i) for i in item_ids]
        check_new_ids(folder, ids, existing=())
        vectors, flags, fused = check_payload(folder, ids, modality_vectors, generated, fused)
        plain, arrays = split_extra(folder, dict(extra or {}), encoder_fingerprint)
        files = files_to_copy(folder, files or {})
        items = None if items is None else check_columns(folder, items, len(ids))
        indexes = {m: VectorIndex.build(v, kind=kind) for m, v in vectors.items()}
        indexes[FUSED] = VectorIndex.build(fused, kind=kind)
        rows = RowTable(ids, flags, [len(ids)])
        meta = {
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model_fingerprint": str(model_fingerprint),
            "encoder_fingerprint": encoder_fingerprint,
            "modalities": list(vectors),
            "dims": {m: int(v.shape[1]) for m, v in vectors.items()},
            "fused_dim": int(fused.shape[1]),
            "index_kinds": {m: ix.kind for m, ix in indexes.items()},
            "index_params": {m: ix.params for m, ix in indexes.items()},
            "count": len(ids),
            "segments": list(rows.segments),
            "extra": plain,
            "extra_arrays": sorted(arrays),
            "files": sorted(files),
            "item_files": [] if items is None else [segment_name(0)],
            "item_columns": [] if items is None else list(items),
        }

        def write(tmp: Path) -> None:
            for key, index in indexes.items():
                index.save(tmp / index_file(key, 0))
            save_arrays(tmp, 0, NewRows(vectors, fused))
            rows.write(tmp, 0)
            for key, arr in arrays.items():
                np.save(tmp / f"extra_{key}.npy", arr)
            for name, src in files.items():
                shutil.copy2(src, tmp / name)
            if items is not None:
                write_segment(tmp, segment_name(0), 0, items)

        meta, path = write_bundle(folder, meta, write)
        return cls(folder, meta, indexes, path, rows)

    @classmethod
    def load(cls, folder: str | Path, *, expect_model_fingerprint: str | None = None,
             expect_encoder_fingerprint: dict | str | None = None) -> "IndexBundle":
        """Open a bundle, refusing (``IndexMismatch``) one that is incomplete, corrupt or stale."""
        name = Path(folder)
        folder = current_bundle_version(name)
        meta = read_meta(folder, name)
        if expect_model_fingerprint is not None and meta["model_fingerprint"] != expect_model_fingerprint:
            raise IndexMismatch(name, f"built for model {meta['model_fingerprint']!r}, "
                                        f"expected model {expect_model_fingerprint!r}: rebuild the indexes")
        if (expect_encoder_fingerprint is not None
                and canonical(meta["encoder_fingerprint"]) != canonical(expect_encoder_fingerprint)):
            raise IndexMismatch(name, f"built with encoder {canonical(meta['encoder_fingerprint'])}, "
                                        f"expected encoder {canonical(expect_encoder_fingerprint)}: "
                                        "rebuild the indexes")
        item_files(name, meta)
        for file in bundle_files(meta):
            if not (folder / file).is_file():
                raise IndexMismatch(name, f"{file} is missing")
        check_sizes(name, folder, meta)
        rows = RowTable.read(name, folder, meta)
        indexes = load_indexes(name, folder, meta)
        check_arrays(name, folder, meta)
        return cls(name, meta, indexes, folder, rows)

    # ------------------------------------------------------------------ update
    def add_items(self, item_ids: Sequence[str], modality_vectors: dict[str, np.ndarray],
                  generated: dict[str, np.ndarray], fused: np.ndarray, extra: dict | None = None,
                  items: Columns | None = None, earlier_items: Columns | None = None) -> np.ndarray:
        """Append items to every index (no rebuild) and save the bundle atomically; return their rows.

        The new rows become one more segment: only their files are written, the earlier ones are linked
        (``retrieval.index.writes``); an append that would make more than ``segments.MAX_SEGMENTS``
        segments rewrites the bundle as one instead (``compact``). ``extra`` (JSON-serialisable) replaces
        meta.json's "extra" (None: kept). ``items``: the new rows' per-item data, written as one more item
        file; required when the bundle has item files. ``earlier_items``: the data of the rows already in
        the bundle, for a bundle written before item files (written as the first item file).

        Ids already in the bundle (or repeated) are refused with ``DataError``. If the save fails the
        bundle is reloaded from disk, so memory and disk stay in step.
        """
        ids = [str(i) for i in item_ids]
        check_new_ids(self.folder, ids, existing=self.item_ids)
        vectors, flags, fused = check_payload(self.folder, ids, modality_vectors, generated, fused,
                                              expect_dims=self.dims, fused_dim=self.meta["fused_dim"])
        item_segments = self._new_segments(len(ids), items, earlier_items)
        changes = {"item_files": [*self.meta.get("item_files", ()), *(name for name, _, _ in item_segments)],
                   "item_columns": list(item_segments[0][2]) if item_segments else self.meta.get("item_columns", [])}
        if extra is not None:
            changes["extra"], arrays = split_extra(self.folder, dict(extra), self.encoder_fingerprint)
            if arrays:
                raise DataError(self.folder, f"extra arrays ({', '.join(arrays)}) are written by build only",
                                field="extra")
        old_n = len(self)
        new = NewRows(vectors, fused) if ids else None
        rows = self._table.extended(ids, flags) if ids else self._table
        compacting = len(rows.segments) > _segments.MAX_SEGMENTS
        joined = self._joined_items(item_segments) if compacting else None  # read before the indexes change
        for m, v in [*vectors.items(), (FUSED, fused)] if ids else ():
            self.indexes[m].add(v)
        if compacting:
            log.info("index %s: %d segments, more than %d: rewriting it as one", self.folder, len(rows.segments),
                     _segments.MAX_SEGMENTS)
            self._write_compacted(rows, new, joined, changes)
        else:
            self._publish(self._next_meta(rows, changes), rows, lambda tmp: write_append(
                tmp, source=self.path, previous=self.meta, indexes=self.indexes, rows=rows, new=new,
                items=item_segments))
        return np.arange(old_n, len(self), dtype=np.int64)

    def compact(self) -> bool:
        """Rewrite the bundle as one segment (every index, array, ids and item file whole), atomically like
        any write; False (nothing written) when it already is one."""
        if len(self.segments) == 1 and len(self.meta.get("item_files", ())) <= 1:
            return False
        self._write_compacted(self._table, None, self._joined_items([]), {})
        return True

    def _joined_items(self, item_segments: ItemSegments) -> Columns | None:
        """The item columns of every row, with those of ``item_segments`` after them (None: no item data)."""
        items = self.item_columns() if self.has_item_files else None
        for _, _, columns in item_segments:
            items = columns if items is None else {c: items[c] + columns[c] for c in items}
        return items

    def _write_compacted(self, rows: RowTable, new: NewRows | None, items: Columns | None, changes: dict) -> None:
        if items is not None:
            changes = {**changes, "item_files": [segment_name(0)], "item_columns": list(items)}
        rows = rows.joined()
        self._publish(self._next_meta(rows, changes), rows, lambda tmp: write_compacted(
            tmp, source=self.path, previous=self.meta, indexes=self.indexes, rows=rows, new=new, items=items))

    def _next_meta(self, rows: RowTable, changes: dict) -> dict:
        """The meta.json of the next version: this one's (in format 2) with ``changes`` and the segments."""
        meta = {k: v for k, v in self.meta.items() if k not in ("item_ids", "generated")}
        return {**meta, **changes, "format_version": FORMAT_VERSION, "count": len(rows),
                "segments": list(rows.segments), "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def _publish(self, meta: dict, rows: RowTable, write: Callable[[Path], Records]) -> None:
        """Write the next version (``write`` fills its folder) and follow it; reload from disk on failure."""
        try:
            meta, self.path = write_bundle(self.folder, meta, write, expect_meta_sha=self._meta_sha)
        except BaseException:
            fresh = IndexBundle.load(self.folder)
            self.indexes, self.path, self._meta_sha = fresh.indexes, fresh.path, fresh._meta_sha
            self._set(fresh.meta, fresh._table)
            raise
        self._meta_sha = _sha256(self.path / META)
        self._set(meta, rows)

    def _new_segments(self, n_new: int, items: Columns | None, earlier: Columns | None) -> ItemSegments:
        """The item files an append writes: (name, first row, columns), checked against the bundle's."""
        done = list(self.meta.get("item_files", ()))
        if items is None:
            if done:
                raise DataError(self.folder, "the bundle stores per-item data: give the new items' data",
                                field="items")
            return []
        if done or not len(self):
            return [(segment_name(len(done)), len(self),
                     check_columns(self.folder, items, n_new, self.meta.get("item_columns") if done else None))]
        if earlier is None:
            raise DataError(self.folder, "the bundle has no item files yet: give the data of its items too",
                            field="earlier_items")
        earlier = check_columns(self.folder, earlier, len(self))
        return [(segment_name(0), 0, earlier),
                (segment_name(1), len(self), check_columns(self.folder, items, n_new, list(earlier)))]

    # ------------------------------------------------------------------ search
    def search(self, modality: str, query_vectors: np.ndarray, k: int, exclude_rows: Any = None) -> SearchHits:
        """Top-``k`` items of ``modality``'s index (or "fused") for each query vector.

        ``exclude_rows``: rows never to return (e.g. a user's items), either one sequence for every query
        or one sequence per query. The index is over-fetched by the number excluded, then filtered.
        For "fused", ``generated`` marks items with at least one generated modality.
        Slots left empty (fewer than k candidates) hold row -1, score -inf.
        """
        if modality not in self.indexes:
            raise KeyError(f"no index {modality!r} in {self.folder} (has {', '.join(self.indexes)})")
        index = self.indexes[modality]
        q = np.asarray(query_vectors)
        n_queries = 1 if q.ndim == 1 else len(q)
        excluded = _exclusion_sets(exclude_rows, n_queries)
        k = min(int(k), index.ntotal)
        fetch = min(index.ntotal, k + max((len(e) for e in excluded), default=0))
        scores, rows = index.search(q, fetch)
        keep = rows >= 0
        for i, e in enumerate(excluded):
            if len(e):
                keep[i] &= ~np.isin(rows[i], e)
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        rows = np.take_along_axis(rows, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
        valid = np.take_along_axis(keep, order, axis=1)
        rows[~valid] = -1
        scores[~valid] = -np.inf
        flags = self.generated.get(modality, self._any_generated)
        generated = np.where(valid, flags[np.maximum(rows, 0)], False)
        return SearchHits(rows=rows, scores=scores, generated=generated)
