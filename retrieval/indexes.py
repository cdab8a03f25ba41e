"""FAISS indexes: one cosine index per modality plus the fused index, stored together as a bundle.

``VectorIndex`` wraps one FAISS index over L2-normalised float32 vectors searched by inner product
(cosine). Rows are item positions (int64, 0..n-1 in insertion order); FAISS assigns them itself, so no
id map is needed. ``kind="auto"`` is exact (``IndexFlatIP``) below ``AUTO_EXACT_MAX`` rows and IVF above.

Why IVF and not HNSW for large catalogs (benchmarks/RESULTS_retrieval_speed.md, 1,000,000 x 512
clustered vectors, 2 shared cores): IVF with nlist = 4 sqrt(n) = 4000 and nprobe 64 gives recall@10
0.9994 at 1.5 ms p50 per single query (exact search: 225 ms) and builds in 3-5 minutes; HNSW (M 32,
efConstruction 40) took 4 minutes to build and reached only recall@10 0.87 at efSearch 256 on the same
data. IVF also appends rows cheaply (no retraining).

``IndexBundle`` is the folder ``indexes/<name>/``: ``<modality>.faiss`` per modality (raw feature
space, every item present, generated rows flagged), ``fused.faiss`` over fused item embeddings for
recommendations, the completed features ``features_<modality>.npy``, the fused matrix ``items.npy``
and ``meta.json``, which records the size and sha256 of every other file (``meta.json.sha256`` holds
meta.json's own hash). Sizes are checked at every load, hashes in full by :func:`verify_bundle`.

Storage (DESIGN.md, "Safety and storage"): ``indexes/<name>`` is a symbolic link to a sibling version
folder ``.<name>.v<generation>-<tag>``. A write fills ``.<name>.tmp-<tag>``, renames it to a version
folder and swaps the link with one ``os.replace``, all under the lock file ``.<name>.lock``
(``fcntl.flock``, non-blocking); so readers see the old bundle or the new one, never half of one, and a
crash at any moment leaves one of them loadable by name. Stale temp folders and all but the previous
version are removed by the next write. A folder written before this layout is migrated on its next write.
The mechanics live in ``dgmrec_core.versioned`` (training runs use them too).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np
from tqdm import tqdm

from dgmrec_core.atomic import atomic_path, atomic_write_text, own_folder_problem
from dgmrec_core.atomic import sha256_file as _sha256
from dgmrec_core.errors import DataError
from dgmrec_core.versioned import current_version, publish, remove_stale, write_lock

AUTO_EXACT_MAX = 50_000  # "auto": exact search below this many rows, IVF at or above
DEFAULT_NPROBE = 64  # IVF lists probed per query (see the module docstring for the measurements)
DEFAULT_EF_SEARCH = 128  # HNSW candidate list size at search time
KMEANS_ITERATIONS = 10
TRAIN_POINTS_PER_LIST = 40  # IVF training sample: this many points per list (FAISS wants >= 39)
SMALL_BATCH = 16  # searches of fewer queries run on one thread (lower latency, no OpenMP overhead)
ADD_CHUNK = 100_000  # rows normalised and added per step (bounds the extra memory of a build)

FORMAT_VERSION = 1
FUSED = "fused"
META = "meta.json"
META_SHA = "meta.json.sha256"  # sha256 of meta.json, which cannot record its own hash
KINDS = ("auto", "flat", "ivf", "hnsw")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class IndexMismatch(ValueError):
    """A bundle on disk does not fit what the caller expects, or is incomplete or corrupt."""

    def __init__(self, folder: str | Path, problem: str) -> None:
        self.folder = str(folder)
        self.problem = problem
        super().__init__(f"index bundle {self.folder}: {problem}")


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _threads(n_queries: int | None) -> None:
    """One OpenMP thread for small query batches (latency), every core for builds and big batches."""
    faiss.omp_set_num_threads(1 if n_queries is not None and n_queries < SMALL_BATCH else _cpus())


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Float32 copy of ``vectors`` with unit-length rows; all-zero rows stay zero."""
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def _matrix(vectors: Any, what: str, dim: int | None = None) -> np.ndarray:
    """Check that ``vectors`` is a finite 2-D numeric matrix (of width ``dim`` when given)."""
    arr = np.asarray(vectors)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise DataError(None, f"{what} must be a 2-D numeric array, got shape {arr.shape} ({arr.dtype})")
    if dim is not None and arr.shape[1] != dim:
        raise DataError(None, f"{what} have dimension {arr.shape[1]}, the index has {dim}")
    if arr.size and not np.isfinite(arr.sum(dtype=np.float64)):
        raise DataError(None, f"{what} contain NaN or infinite values")
    return arr


class VectorIndex:
    """One FAISS inner-product index over L2-normalised vectors; rows are int64 item positions."""

    def __init__(self, index: faiss.Index) -> None:
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError("VectorIndex needs an inner-product FAISS index")
        self._index = index

    @classmethod
    def build(cls, vectors: np.ndarray, *, kind: str = "auto", nlist: int | None = None,
              nprobe: int | None = None, hnsw_m: int = 32, ef_search: int = DEFAULT_EF_SEARCH,
              ef_construction: int = 40, seed: int = 0) -> "VectorIndex":
        """Index ``vectors`` (n, d). ``kind``: "flat" (exact), "ivf", "hnsw" or "auto".

        "auto" is "flat" below ``AUTO_EXACT_MAX`` rows, else "ivf". IVF uses ``nlist`` lists
        (default ~4 sqrt(n), at most n/39), trained by seeded spherical k-means on a seeded sample of
        40 points per list, and probes ``nprobe`` lists per query (default ``DEFAULT_NPROBE``).
        """
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")
        x = _matrix(vectors, "vectors")
        n, d = x.shape
        if kind == "auto":
            kind = "flat" if n < AUTO_EXACT_MAX else "ivf"
        _threads(None)
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
        else:
            if n == 0:
                raise DataError(None, "an IVF index needs at least one vector to train on")
            if nlist is None:
                nlist = min(round(4 * math.sqrt(n)), n // 39)
            nlist = max(1, min(nlist, n))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            index.cp.niter = KMEANS_ITERATIONS
            index.cp.spherical = True
            index.nprobe = min(nlist, nprobe or DEFAULT_NPROBE)
            rng = np.random.default_rng(seed)
            n_train = min(n, TRAIN_POINTS_PER_LIST * nlist)
            sample = np.sort(rng.choice(n, n_train, replace=False)) if n_train < n else slice(None)
            index.train(normalise(x[sample]))
        out = cls(index)
        out._append(x)
        return out

    @classmethod
    def load(cls, path: str | Path) -> "VectorIndex":
        """Read an index written by ``save``; a missing or unreadable file raises ``DataError``."""
        path = Path(path)
        if not path.is_file():
            raise DataError(path, "index file is missing")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise DataError(path, f"not a readable FAISS index ({str(exc).splitlines()[-1][:200]})") from exc
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise DataError(path, "FAISS index does not use inner-product search")
        return cls(index)

    def save(self, path: str | Path) -> None:
        """Write the index atomically (temp file beside ``path``, then rename)."""
        with atomic_path(path) as tmp:
            faiss.write_index(self._index, str(tmp))

    @property
    def kind(self) -> str:
        if isinstance(self._index, faiss.IndexIVF):
            return "ivf"
        if isinstance(self._index, faiss.IndexHNSW):
            return "hnsw"
        return "flat"

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def params(self) -> dict[str, int]:
        """Search-time parameters of the approximate kinds (nlist/nprobe, M/efSearch)."""
        if isinstance(self._index, faiss.IndexIVF):
            return {"nlist": int(self._index.nlist), "nprobe": int(self._index.nprobe)}
        if isinstance(self._index, faiss.IndexHNSW):
            return {"M": int(self._index.hnsw.nb_neighbors(1)), "efSearch": int(self._index.hnsw.efSearch)}
        return {}

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Trade speed for recall at search time (IVF ``nprobe``, HNSW ``ef_search``)."""
        if nprobe is not None and isinstance(self._index, faiss.IndexIVF):
            self._index.nprobe = max(1, min(nprobe, self._index.nlist))
        if ef_search is not None and isinstance(self._index, faiss.IndexHNSW):
            self._index.hnsw.efSearch = max(1, ef_search)

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Append ``vectors`` (no retraining); return their new rows (int64)."""
        x = _matrix(vectors, "vectors", self.dim)
        start = self.ntotal
        _threads(None)
        self._append(x)
        return np.arange(start, self.ntotal, dtype=np.int64)

    def _append(self, x: np.ndarray) -> None:
        for s in tqdm(range(0, len(x), ADD_CHUNK), desc=f"indexing ({self.kind})", unit="chunk",
                      disable=len(x) <= ADD_CHUNK):
            self._index.add(normalise(x[s:s + ADD_CHUNK]))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine neighbours of ``queries`` (q, d) or (d,): ``(scores, rows)``, both (q, k').

        k' = min(k, ntotal). Scores are float32 cosines, rows int64; an approximate index may leave
        slots empty, marked by row -1 and score -inf.
        """
        q = np.asarray(queries)
        q = _matrix(q[None, :] if q.ndim == 1 else q, "queries", self.dim)
        k = min(int(k), self.ntotal)
        if k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        before = faiss.omp_get_max_threads()  # OpenMP is shared with torch: restore it afterwards
        _threads(len(q))
        try:
            scores, rows = self._index.search(normalise(q), k)
        finally:
            faiss.omp_set_num_threads(before)
        scores[rows < 0] = -np.inf
        return scores, rows.astype(np.int64, copy=False)


@dataclass(frozen=True)
class SearchHits:
    """Search results, one row per query: item rows (-1 = empty slot), cosine scores and generated flags."""

    rows: np.ndarray  # (q, k) int64
    scores: np.ndarray  # (q, k) float32, -inf on empty slots
    generated: np.ndarray  # (q, k) bool: the hit's vector in this index was generated, not observed


def _json_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


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
    """The folder of per-modality indexes, the fused index, completed features and ``meta.json``."""

    def __init__(self, folder: Path, meta: dict, indexes: dict[str, VectorIndex], path: Path | None = None) -> None:
        self.folder = folder  # the bundle's name (a link to its current version)
        self.path = path or folder  # the version folder this snapshot was read from
        self.indexes = indexes
        meta_file = self.path / META
        self._meta_sha = _sha256(meta_file) if meta_file.is_file() else None  # detects later writers
        self._set_meta(meta)

    def _set_meta(self, meta: dict) -> None:
        self.meta = meta
        self.generated = {m: np.asarray(meta["generated"][m], dtype=bool) for m in meta["modalities"]}
        self._any_generated = np.any([self.generated[m] for m in meta["modalities"]], axis=0)
        self._rows: dict[str, int] | None = None

    # ------------------------------------------------------------------ accessors
    @property
    def item_ids(self) -> list[str]:
        return self.meta["item_ids"]

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

    def features(self, modality: str) -> np.ndarray:
        """Completed raw features of ``modality`` (observed + generated rows), memory-mapped."""
        if modality not in self.meta["modalities"]:
            raise KeyError(f"no modality {modality!r} in {self.folder} (has {', '.join(self.modalities)})")
        return np.load(self.path / f"features_{modality}.npy", mmap_mode="r")

    def fused_items(self) -> np.ndarray:
        """Fused item embeddings (n, d_fused), memory-mapped."""
        return np.load(self.path / "items.npy", mmap_mode="r")

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
              files: dict[str, str | Path] | None = None) -> "IndexBundle":
        """Build every index and write the bundle to ``folder`` atomically (replacing any old one).

        ``modality_vectors[m]`` are the completed features (n, d_m) of modality m, ``generated[m]`` (n,)
        flags the rows the model generated. ``extra`` values that are numpy arrays are stored as
        ``extra_<key>.npy``; the rest (JSON-serialisable) goes into ``meta.json`` under "extra".
        ``files`` (bundle file name -> source path, e.g. the model checkpoint) are copied in and kept by
        ``add_items``.
        """
        folder = Path(folder)
        ids = [str(i) for i in item_ids]
        _check_new_ids(folder, ids, existing=())
        vectors, flags, fused = _check_payload(folder, ids, modality_vectors, generated, fused)
        extra = dict(extra or {})
        arrays = {k: np.asarray(v) for k, v in extra.items() if isinstance(v, np.ndarray)}
        for key in arrays:
            if not _NAME.match(key):
                raise DataError(folder, f"extra array name {key!r} must match {_NAME.pattern}", field="extra")
        files = {str(name): Path(src) for name, src in (files or {}).items()}
        for name, src in files.items():
            if Path(name).name != name or name == META or name.endswith((".faiss", ".npy")):
                raise DataError(folder, f"bundle file name {name!r} must be a plain name, not {META}, "
                                        f"*.faiss or *.npy", field="files")
            if not src.is_file():
                raise DataError(src, "file to copy into the bundle does not exist", field="files")
        plain = {k: v for k, v in extra.items() if k not in arrays}
        try:
            json.dumps({"extra": plain, "encoder_fingerprint": encoder_fingerprint})
        except (TypeError, ValueError) as exc:
            raise DataError(folder, f"extra / encoder_fingerprint must be JSON-serialisable ({exc})") from exc
        indexes = {m: VectorIndex.build(v, kind=kind) for m, v in vectors.items()}
        indexes[FUSED] = VectorIndex.build(fused, kind=kind)
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
            "extra": plain,
            "extra_arrays": sorted(arrays),
            "files": sorted(files),
            "item_ids": ids,
            "generated": {m: f.tolist() for m, f in flags.items()},
        }

        def write(tmp: Path) -> None:
            for m, v in vectors.items():
                np.save(tmp / f"features_{m}.npy", np.ascontiguousarray(v, dtype=np.float32))
            np.save(tmp / "items.npy", np.ascontiguousarray(fused, dtype=np.float32))
            for key, arr in arrays.items():
                np.save(tmp / f"extra_{key}.npy", arr)
            for name, src in files.items():
                shutil.copy2(src, tmp / name)

        meta, path = _write_bundle(folder, meta, indexes, write)
        return cls(folder, meta, indexes, path)

    @classmethod
    def load(cls, folder: str | Path, *, expect_model_fingerprint: str | None = None,
             expect_encoder_fingerprint: dict | str | None = None) -> "IndexBundle":
        """Open a bundle, refusing (``IndexMismatch``) one that is incomplete, corrupt or stale."""
        name = Path(folder)
        folder = _current_version(name)
        meta = _read_meta(folder, name)
        if expect_model_fingerprint is not None and meta["model_fingerprint"] != expect_model_fingerprint:
            raise IndexMismatch(name, f"built for model {meta['model_fingerprint']!r}, "
                                        f"expected model {expect_model_fingerprint!r}: rebuild the indexes")
        if (expect_encoder_fingerprint is not None
                and _json_key(meta["encoder_fingerprint"]) != _json_key(expect_encoder_fingerprint)):
            raise IndexMismatch(name, f"built with encoder {_json_key(meta['encoder_fingerprint'])}, "
                                        f"expected encoder {_json_key(expect_encoder_fingerprint)}: "
                                        "rebuild the indexes")
        n = len(meta["item_ids"])
        dims = {**meta["dims"], FUSED: meta["fused_dim"]}
        indexes = {}
        for key in [*meta["modalities"], FUSED]:
            try:
                index = VectorIndex.load(folder / f"{key}.faiss")
            except DataError as exc:
                raise IndexMismatch(name, f"{key}.faiss: {exc.problem}") from exc
            if index.ntotal != n:
                raise IndexMismatch(name, f"{key}.faiss has {index.ntotal} rows but meta.json lists {n} items")
            if index.dim != dims[key]:
                raise IndexMismatch(name, f"{key}.faiss has dimension {index.dim}, meta.json says {dims[key]}")
            indexes[key] = index
        for file in [*(f"features_{m}.npy" for m in meta["modalities"]), "items.npy",
                     *(f"extra_{k}.npy" for k in meta["extra_arrays"]), *meta.get("files", ())]:
            if not (folder / file).is_file():
                raise IndexMismatch(name, f"{file} is missing")
        _check_sizes(name, folder, meta)
        for m in meta["modalities"]:
            try:
                shape = np.load(folder / f"features_{m}.npy", mmap_mode="r").shape
            except (OSError, ValueError, EOFError) as exc:
                raise IndexMismatch(name, f"features_{m}.npy is not a readable array ({exc})") from exc
            if shape != (n, dims[m]):
                raise IndexMismatch(name, f"features_{m}.npy has shape {shape}, expected {(n, dims[m])}")
        return cls(name, meta, indexes, folder)

    # ------------------------------------------------------------------ update
    def add_items(self, item_ids: Sequence[str], modality_vectors: dict[str, np.ndarray],
                  generated: dict[str, np.ndarray], fused: np.ndarray, extra: dict | None = None) -> np.ndarray:
        """Append items to every index (no rebuild) and save the bundle atomically; return their rows.

        ``extra`` (JSON-serialisable) replaces those keys of meta.json's "extra" (e.g. per-item lists).

        Ids already in the bundle (or repeated) are refused with ``DataError``. If the save fails the
        bundle is reloaded from disk, so memory and disk stay in step.
        """
        ids = [str(i) for i in item_ids]
        _check_new_ids(self.folder, ids, existing=self.item_ids)
        vectors, flags, fused = _check_payload(self.folder, ids, modality_vectors, generated, fused,
                                               expect_dims=self.dims, fused_dim=self.meta["fused_dim"])
        old_n = len(self)
        meta = dict(self.meta)
        meta["item_ids"] = self.item_ids + ids
        meta["generated"] = {m: self.meta["generated"][m] + flags[m].tolist() for m in self.modalities}
        meta["count"] = len(meta["item_ids"])
        meta["extra"] = {**self.meta["extra"], **(extra or {})}
        meta["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for m, v in [*vectors.items(), (FUSED, fused)]:
            self.indexes[m].add(v)
        source = self.path  # the snapshot loaded, never the live folder

        def write(tmp: Path) -> None:
            for m, v in vectors.items():
                _append_npy(source / f"features_{m}.npy", v, tmp / f"features_{m}.npy")
            _append_npy(source / "items.npy", fused, tmp / "items.npy")
            for key in meta["extra_arrays"]:
                shutil.copy2(source / f"extra_{key}.npy", tmp / f"extra_{key}.npy")
            for name in meta.get("files", ()):
                shutil.copy2(source / name, tmp / name)

        try:
            meta, self.path = _write_bundle(self.folder, meta, self.indexes, write,
                                            expect_meta_sha=self._meta_sha)
        except BaseException:
            fresh = IndexBundle.load(self.folder)
            self.indexes, self.path, self._meta_sha = fresh.indexes, fresh.path, fresh._meta_sha
            self._set_meta(fresh.meta)
            raise
        self._meta_sha = _sha256(self.path / META)
        self._set_meta(meta)
        return np.arange(old_n, len(self), dtype=np.int64)

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


# ---------------------------------------------------------------------- helpers
def _check_new_ids(folder: Path, ids: list[str], existing: Sequence[str]) -> None:
    seen = set(existing)
    dupes = sorted({i for i, c in Counter(ids).items() if c > 1 or i in seen})
    if dupes:
        shown = ", ".join(repr(d) for d in dupes[:5]) + (" ..." if len(dupes) > 5 else "")
        where = "already in the bundle or repeated" if existing else "repeated"
        raise DataError(folder, f"{len(dupes)} duplicate item id(s) {where}: {shown}", field="item_ids")


def _check_payload(folder: Path, ids: list[str], modality_vectors: dict[str, np.ndarray],
                   generated: dict[str, np.ndarray], fused: np.ndarray, *,
                   expect_dims: dict[str, int] | None = None, fused_dim: int | None = None,
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Validate per-modality vectors, generated flags and fused vectors against ``ids``."""
    n = len(ids)
    if not modality_vectors:
        raise DataError(folder, "no modality vectors given", field="modality_vectors")
    if expect_dims is not None and list(modality_vectors) != list(expect_dims):
        if set(modality_vectors) != set(expect_dims):
            raise DataError(folder, f"modalities {sorted(modality_vectors)} differ from the bundle's "
                                    f"{sorted(expect_dims)}", field="modality_vectors")
        modality_vectors = {m: modality_vectors[m] for m in expect_dims}
    if set(generated) != set(modality_vectors):
        raise DataError(folder, f"generated flags are for {sorted(generated)}, vectors for "
                                f"{sorted(modality_vectors)}", field="generated")
    vectors, flags = {}, {}
    for m, v in modality_vectors.items():
        if not _NAME.match(m) or m == FUSED:
            raise DataError(folder, f"modality name {m!r} must match {_NAME.pattern} and not be "
                                    f"{FUSED!r}", field="modality_vectors")
        try:
            v = _matrix(v, f"vectors of {m!r}", None if expect_dims is None else expect_dims[m])
        except DataError as exc:
            raise DataError(folder, exc.problem, field=m) from exc
        if len(v) != n:
            raise DataError(folder, f"{len(v)} vectors of {m!r} for {n} item ids", field=m)
        g = np.asarray(generated[m])
        if g.shape != (n,) or g.dtype != bool:
            raise DataError(folder, f"generated flags of {m!r} must be a bool array of shape ({n},), "
                                    f"got {g.dtype} {g.shape}", field="generated")
        vectors[m], flags[m] = v, g
    try:
        fused = _matrix(fused, "fused vectors", fused_dim)
    except DataError as exc:
        raise DataError(folder, exc.problem, field="fused") from exc
    if len(fused) != n:
        raise DataError(folder, f"{len(fused)} fused vectors for {n} item ids", field="fused")
    return vectors, flags, fused


def _append_npy(source: Path, new: np.ndarray, target: Path) -> None:
    """Write ``source``'s rows followed by ``new`` to ``target`` without loading ``source`` whole."""
    old = np.load(source, mmap_mode="r")
    out = np.lib.format.open_memmap(target, mode="w+", dtype=np.float32,
                                    shape=(old.shape[0] + len(new), old.shape[1]))
    for s in range(0, old.shape[0], ADD_CHUNK):
        e = min(s + ADD_CHUNK, old.shape[0])
        out[s:e] = old[s:e]
    out[old.shape[0]:] = new
    out.flush()
    del out


def check_bundle_target(folder: str | Path, *, force: bool = False) -> None:
    """Refuse (``DataError``) to write a bundle over something that is not one, unless ``force``.

    An absent folder, an empty one, a bundle (``meta.json``) or a link of this layout may be written;
    any other folder only with ``force`` (its files are then replaced). A file is always refused.
    """
    folder = Path(folder)
    problem = own_folder_problem(folder)
    if problem:
        raise DataError(folder, problem, field="--out")
    if folder.is_symlink():
        if os.readlink(folder).startswith(f".{folder.name}.v") or force:
            return
        raise DataError(folder, "is a link that is not an index of this tool; choose another --out or add --force "
                                "to replace it", field="--out")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise DataError(folder, "exists and is a file, not an index folder: choose another --out", field="--out")
    if (folder / META).is_file() or not any(folder.iterdir()) or force:
        return
    raise DataError(folder, f"exists and is not an index (no {META}); choose another --out, or add --force to "
                            "replace everything in it", field="--out")


def index_lock(folder: str | Path) -> AbstractContextManager[None]:
    """Hold the bundle's write lock (``.<name>.lock`` beside it); ``IndexMismatch`` at once when it is held."""
    return write_lock(folder, lambda path: IndexMismatch(
        folder, f"another process is writing this index (lock {path} is held); try again when it has finished"))


def _current_version(folder: Path) -> Path:
    """The version folder a bundle's files are read from (see ``dgmrec_core.versioned.current_version``)."""
    return current_version(folder, META, IndexMismatch)


def bundle_version(folder: str | Path) -> Path:
    """The version folder the bundle named ``folder`` resolves to now (cheap: a link read and a few stats);
    a loaded bundle whose ``path`` differs has been replaced by a newer version."""
    return _current_version(Path(folder))


def file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file of a bundle folder except meta.json and its hash."""
    return {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(folder.iterdir()) if p.is_file() and p.name not in (META, META_SHA)}


def _check_sizes(name: Path, folder: Path, meta: dict) -> None:
    """Cheap load-time check: every recorded file exists with its recorded size."""
    for file, record in (meta.get("checksums") or {}).items():
        path = folder / file
        if not path.is_file():
            raise IndexMismatch(name, f"{file} is missing")
        size = path.stat().st_size
        if size != record["size"]:
            raise IndexMismatch(name, f"{file} has {size} bytes but meta.json records {record['size']} "
                                      f"(truncated or replaced); rebuild the index or restore the file")


def verify_bundle(folder: str | Path) -> list[str]:
    """Every problem of a bundle's files, checked in full (sizes and sha256); empty when it is intact."""
    name = Path(folder)
    path = _current_version(name)
    problems = []
    if not (path / META).is_file():
        return [f"{META}: missing"]
    if not (path / META_SHA).is_file():
        problems.append(f"{META_SHA}: missing (a bundle written before checksums; rebuild it to verify it)")
    elif (path / META_SHA).read_text().strip() != _sha256(path / META):
        problems.append(f"{META}: sha256 differs from {META_SHA} (modified or corrupt)")
    try:
        records = json.loads((path / META).read_text()).get("checksums") or {}
    except (OSError, ValueError, AttributeError) as exc:
        return [*problems, f"{META}: not valid JSON ({exc})"]
    for file, record in sorted(records.items()):
        target = path / file
        if not target.is_file():
            problems.append(f"{file}: missing")
        elif target.stat().st_size != record["size"]:
            problems.append(f"{file}: {target.stat().st_size} bytes, recorded {record['size']} (truncated or replaced)")
        elif _sha256(target) != record["sha256"]:
            problems.append(f"{file}: sha256 differs from the one recorded (modified or corrupt)")
    for p in sorted(path.iterdir()):
        if p.name not in records and p.name not in (META, META_SHA):
            problems.append(f"{p.name}: not part of the bundle (unrecorded file)")
    return problems


def _write_bundle(folder: Path, meta: dict, indexes: dict[str, VectorIndex], write_arrays,
                  expect_meta_sha: str | None = None) -> tuple[dict, Path]:
    """Write a whole bundle into a new version folder and switch ``folder`` to it, under the lock.

    ``expect_meta_sha``: refuse (``IndexMismatch``) when the bundle on disk changed since it was loaded.
    Returns the meta written (with generation and checksums) and the version folder.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    with index_lock(folder):
        try:
            previous = _current_version(folder)
        except IndexMismatch:
            previous = None
        if expect_meta_sha is not None and (previous is None or not (previous / META).is_file()
                                            or _sha256(previous / META) != expect_meta_sha):
            raise IndexMismatch(folder, "the index changed since it was loaded (another add-items or build "
                                        "finished meanwhile); nothing was written: run the command again")
        remove_stale(folder, keep={p for p in (previous,) if p is not None})
        try:
            generation = int(json.loads((previous / META).read_text()).get("generation", 0)) + 1
        except (OSError, ValueError, TypeError, AttributeError):
            generation = 1
        written = {}

        def fill(tmp: Path) -> None:
            for name, index in indexes.items():
                index.save(tmp / f"{name}.faiss")
            write_arrays(tmp)
            written.update(meta, generation=generation, checksums=file_records(tmp))
            text = json.dumps(written, separators=(",", ":"))
            atomic_write_text(tmp / META, text)
            atomic_write_text(tmp / META_SHA, hashlib.sha256(text.encode()).hexdigest() + "\n")

        version = publish(folder, fill, generation)
        remove_stale(folder, keep={version, *(p for p in (previous,) if p is not None and p.parent == folder.parent)})
    return written, version


# meta.json keys and the JSON types they must have
_META_TYPES = {"format_version": int, "model_fingerprint": str, "encoder_fingerprint": (dict, str),
               "modalities": list, "dims": dict, "fused_dim": int, "item_ids": list, "generated": dict,
               "extra_arrays": list}


def _read_meta(folder: Path, name: Path | None = None) -> dict:
    name = name or folder
    path = folder / META
    if not path.is_file():
        raise IndexMismatch(name, f"{META} is missing")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IndexMismatch(name, f"{META} is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise IndexMismatch(name, f"{META} must hold a JSON object")
    missing = [key for key in _META_TYPES if key not in meta]
    if missing:
        raise IndexMismatch(name, f"{META} lacks {', '.join(missing)}")
    for key, kind in _META_TYPES.items():
        if not isinstance(meta[key], kind):
            raise IndexMismatch(name, f"{META}: '{key}' has the wrong type ({type(meta[key]).__name__})")
    if meta["format_version"] != FORMAT_VERSION:
        raise IndexMismatch(name, f"format version {meta['format_version']}, this code reads {FORMAT_VERSION}")
    n = len(meta["item_ids"])
    if not all(isinstance(i, str) for i in meta["item_ids"]):
        raise IndexMismatch(name, f"{META}: item_ids must all be strings")
    for m in meta["modalities"]:
        if not isinstance(m, str) or not isinstance(meta["dims"].get(m), int):
            raise IndexMismatch(name, f"{META}: modality {m!r} has no integer dimension in 'dims'")
        flags = meta["generated"].get(m, ())
        if not isinstance(flags, list) or len(flags) != n:
            raise IndexMismatch(name, f"{META}: generated flags of {m!r} do not cover the {n} items")
    return meta
