"""The compressed index kind "ivfpq": IVF over product-quantised codes, re-ranked exactly from disk.

FAISS ``IndexIVFPQ`` keeps one short code per row in memory (``m`` bytes: one byte per ``d / m``
dimensions) plus its 8-byte id, so 10,000,000 x 512 vectors take about 0.7 GB instead of the 20 GB of
a flat or IVF-flat index. Codes alone rank too coarsely for recall@10 >= 0.9, so each query fetches
``rerank`` candidates from the codes and re-scores them by the exact inner product with the full
vectors, which stay on disk: a float16 ``.npy`` of L2-normalised rows beside the index file
(``<index file>.vectors.npy``), memory-mapped, so only the candidate rows are read.

``RowStore`` is that second half: the full vectors as a list of segments (the files saved, one per
bundle segment, the array an index was built from, rows appended since), written out in chunks by
``write`` (all rows, or only those added since the last save) and read back by ``NpyRows``.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np

from dgmrec_core.atomic import atomic_path
from dgmrec_core.errors import DataError

DIMS_PER_CODE = 8  # PQ: one byte of code per 8 dimensions (64 bytes at d = 512)
PQ_TRAIN_POINTS = 65_536  # at least this many training points (PQ wants >= 39 per code value)
STORE_DTYPE = np.float16  # full vectors on disk: half the bytes of float32, cosine error < 1e-3
CHUNK = 100_000  # rows per step when the store is written
READ_THREADS = 16  # parallel row reads: a cold random read costs 0.12 ms alone, 0.018 ms amortised over 16
_READERS: dict[int, ThreadPoolExecutor] = {}  # per process id (a forked child gets its own), made on first use


def sidecar(path: str | Path) -> Path:
    """The file of full vectors that belongs to the index file ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".vectors.npy")


def pq_layout(n: int, d: int) -> tuple[int, int]:
    """PQ sub-quantizers ``m`` (a divisor of ``d``, about ``d / DIMS_PER_CODE``) and bits per code,
    fewer than 8 when ``n`` is too small to train 256 values per sub-quantizer."""
    m = max(k for k in range(1, max(1, d // DIMS_PER_CODE) + 1) if d % k == 0)
    nbits = 8 if n >= 39 * 256 else max(1, int(math.log2(max(2, n // 39))))
    return m, nbits


def new_ivfpq(d: int, n: int, nlist: int, seed: int, niter: int) -> faiss.IndexIVFPQ:
    """An untrained inner-product IVF-PQ index with seeded spherical k-means (coarse and PQ)."""
    m, nbits = pq_layout(n, d)
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.niter = niter
    index.cp.spherical = True
    index.pq.cp.seed = seed
    return index


def train_size(n: int, nlist: int, per_list: int) -> int:
    """Rows sampled to train the coarse and the PQ quantizers."""
    return min(n, max(per_list * nlist, PQ_TRAIN_POINTS))


def _unit(x: np.ndarray) -> np.ndarray:
    out = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)


class NpyRows:
    """Rows of a 2-D ``.npy`` file read on demand with ``os.pread``; the header is parsed by numpy's
    format reader (a literal, never unpickled). Indexing takes a slice or a 1-D int array of rows."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            self.shape, fortran, self.dtype = read(f)
            self._offset = f.tell()
        if fortran or len(self.shape) != 2 or self.dtype.hasobject:
            raise ValueError(f"expected a C-ordered 2-D numeric array, got {self.dtype} {self.shape}")
        self._row = self.shape[1] * self.dtype.itemsize
        if os.path.getsize(path) < self._offset + self.shape[0] * self._row:
            raise ValueError("the file is shorter than its header says")
        self._fd = os.open(path, os.O_RDONLY)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __len__(self) -> int:
        return int(self.shape[0])

    def _read(self, start: int, count: int) -> np.ndarray:
        raw = os.pread(self._fd, count * self._row, self._offset + start * self._row)
        return np.frombuffer(raw, self.dtype).reshape(count, self.shape[1])

    def __getitem__(self, key: slice | np.ndarray) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, _ = key.indices(len(self))
            return self._read(start, max(0, stop - start))
        rows = np.asarray(key, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError("row out of range")
        out = np.empty((len(rows), self.shape[1]), self.dtype)
        parts = np.array_split(np.arange(len(rows)), min(READ_THREADS, max(1, len(rows) // 8)))

        def fill(part: np.ndarray) -> None:
            for i in part:
                out[i] = self._read(int(rows[i]), 1)[0]

        if len(parts) == 1:
            fill(parts[0])
        else:
            pool = _READERS.get(os.getpid()) or _READERS.setdefault(
                os.getpid(), ThreadPoolExecutor(READ_THREADS, thread_name_prefix="ivfpq-read"))
            list(pool.map(fill, parts))
        return out


class RowStore:
    """Full vectors of an IVF-PQ index for re-ranking, as segments; rows are L2-normalised on read."""

    def __init__(self, segments: list[np.ndarray], dim: int) -> None:
        self.dim = dim
        self._source: np.ndarray | None = None  # rows of a build, not normalised yet (``read_from``)
        self._set(segments)

    def _set(self, segments: list[np.ndarray]) -> None:
        self._segments = [s for s in segments if len(s)]
        self._starts = np.cumsum([0] + [len(s) for s in self._segments])

    def read_from(self, x: np.ndarray) -> None:
        """Hold the rows ``x`` an index was built from (by reference, normalised when read) until ``write``."""
        self._source = x
        self._set([x])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def append(self, x: np.ndarray) -> None:
        """Keep a normalised float16 copy of new rows (in memory until the next ``write``)."""
        if len(x):
            self._segments.append(_unit(x).astype(STORE_DTYPE))
            self._starts = np.append(self._starts, self._starts[-1] + len(x))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Normalised float32 vectors of ``rows`` (1-D int64, all valid), read in ascending order."""
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), self.dim), np.float32)
        seg = np.searchsorted(self._starts, rows[order], side="right") - 1
        for s in np.unique(seg):
            pick = order[seg == s]
            out[pick] = self._segments[s][rows[pick] - self._starts[s]]
        return _unit(out)

    def chunks(self, size: int = CHUNK, start: int = 0) -> Iterator[np.ndarray]:
        """Every row from ``start`` on, in order, normalised, as float16 blocks of at most ``size`` rows (rows
        stored already are copied as they are: normalising them again could move them by a rounding step)."""
        for first, segment in zip(self._starts, self._segments):
            skip = max(0, start - int(first))
            for s in range(skip, len(segment), size):
                block = segment[s:s + size]
                yield _unit(block).astype(STORE_DTYPE) if segment is self._source else np.asarray(block)

    def write(self, path: Path, start: int = 0) -> None:
        """Write the rows from ``start`` on (a segment boundary: 0, or the rows saved before) to the ``.npy``
        file ``path`` atomically (plain writes, no memory map, so a build's resident memory does not grow
        by the file), then read those rows from that file."""
        kept = [s for first, s in zip(self._starts, self._segments) if first < start]
        if int(self._starts[len(kept)]) != start:
            raise ValueError(f"row {start} is not where a segment of the store starts")
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(STORE_DTYPE)),
                  "fortran_order": False, "shape": (len(self) - start, self.dim)}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.writelines(np.ascontiguousarray(block).tobytes() for block in self.chunks(start=start))
        self._set([*kept, NpyRows(path)])
        self._source = None if start == 0 else self._source

    def extend(self, other: RowStore) -> None:
        """Append ``other``'s rows (the store of a later segment of the same index)."""
        self._set([*self._segments, *other._segments])

    @classmethod
    def load(cls, path: Path, n: int, dim: int) -> RowStore:
        """Open ``path``; its first ``n`` rows belong to the index (a standalone save that stopped between
        its two files leaves a longer file: appended rows only extend it)."""
        if not path.is_file():
            raise DataError(path, "the full vectors of this IVF-PQ index are missing")
        try:
            rows = NpyRows(path)
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(path, f"not a readable .npy file ({exc})") from exc
        if rows.dtype != STORE_DTYPE or rows.shape[1] != dim or rows.shape[0] < n:
            raise DataError(path, f"holds {rows.dtype} {rows.shape}, expected {np.dtype(STORE_DTYPE)} ({n}, {dim})")
        rows.shape = (n, dim)  # rows past n (see above) are never read
        return cls([rows], dim)


def rerank(index: faiss.IndexIVFPQ, store: RowStore, q: np.ndarray, k: int,
           candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of ``candidates`` rows from the codes, re-scored with the full vectors of ``store``.

    ``q`` are normalised float32 queries; returns (scores, rows) like ``faiss.Index.search``.
    """
    fetch = min(max(k, candidates), index.ntotal)
    _, cand = index.search(q, fetch)
    scores = np.full(cand.shape, -np.inf, np.float32)
    valid = cand >= 0
    flat = cand[valid]
    if len(flat):
        vecs = store.take(flat)
        scores[valid] = np.einsum("ij,ij->i", vecs, np.repeat(q, valid.sum(axis=1), axis=0))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    rows = np.take_along_axis(cand, order, axis=1)
    return np.take_along_axis(scores, order, axis=1), rows
