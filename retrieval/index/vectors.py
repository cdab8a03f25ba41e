"""One FAISS index over L2-normalised vectors searched by inner product (cosine): ``VectorIndex``.

Rows are item positions (int64, 0..n-1 in insertion order); FAISS assigns them itself, so no id map is
needed. ``kind="auto"`` is exact (``IndexFlatIP``) below ``AUTO_EXACT_MAX`` rows, IVF above, and IVF-PQ
("ivfpq", ``retrieval.index.compressed``) once IVF's float32 vectors (n x d x 4 bytes) would pass
``AUTO_COMPRESS_BYTES`` (4 GiB: 2,097,152 rows at d = 512).

Why IVF and not HNSW for large catalogs (benchmarks/RESULTS_retrieval_speed.md, 1,000,000 x 512
clustered vectors, 2 shared cores): IVF with nlist = 4 sqrt(n) = 4000 and nprobe 64 gives recall@10
0.9994 at 1.5 ms p50 per single query (exact search: 225 ms) and builds in 3-5 minutes; HNSW (M 32,
efConstruction 40) took 4 minutes to build and reached only recall@10 0.87 at efSearch 256 on the same
data. IVF also appends rows cheaply (no retraining).

Why IVF-PQ with re-ranking from disk beyond that (benchmarks/RESULTS.md section 9, same generator,
one build thread): an IVF-flat index holds every vector in memory, 20 GB at 10,000,000 x 512, more than
this 24 GB machine can spare. "ivfpq" keeps 64-byte PQ codes in memory (nlist ~sqrt(n), nprobe 32) and
re-scores the best ``DEFAULT_RERANK`` = 200 candidates exactly from a float16 file on disk. At 10M x 512:
recall@10 0.996, 751 MB peak RSS for a process that loads and searches, build 15 min on one core;
single-query p50 of a few ms cached and under 10 ms with every row read from disk (RESULTS.md section 9
has the measured figures and the nprobe / candidate sweep). At 1M IVF-PQ's process holds 129 MB
against IVF's 2.0 GB, at recall 0.995+ against 1.000. Below the threshold IVF stays: more exact, and
its memory is affordable.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from dgmrec_core.atomic import atomic_path
from dgmrec_core.errors import DataError
from retrieval.defaults import AUTO_COMPRESS_BYTES, AUTO_EXACT_MAX
from retrieval.defaults import INDEX_KINDS as KINDS
from retrieval.index.compressed import RowStore, new_ivfpq, rerank, sidecar, train_size
from retrieval.index.deltas import list_sizes, merge_ivf_segment, new_hnsw_like, shard_view, write_ivf_tail
from retrieval.index.gpu import GpuMirror

DEFAULT_NPROBE = 64  # IVF lists probed per query (see the module docstring for the measurements)
DEFAULT_EF_SEARCH = 128  # HNSW candidate list size at search time
KMEANS_ITERATIONS = 10
TRAIN_POINTS_PER_LIST = 40  # IVF training sample: this many points per list (FAISS wants >= 39)
SMALL_BATCH = 16  # searches of fewer queries run on one thread (lower latency, no OpenMP overhead)
ADD_CHUNK = 100_000  # rows normalised and added per step (bounds the extra memory of a build)
DEFAULT_RERANK = 200  # "ivfpq": candidates per query re-scored with the full vectors ...
IVFPQ_NPROBE = 32  # ... and its lists probed: at 10M recall@10 0.996 (64 lists, 100 candidates: 0.981)


@contextmanager
def _search_threads(n_queries: int):
    """One OpenMP thread for a small query batch (latency), the process's own setting otherwise; restored
    afterwards. OpenMP is shared with torch, so FAISS never changes the thread count a process set
    (``--threads``): a training run's torch ops would otherwise run on more threads than it asked for."""
    before = faiss.omp_get_max_threads()
    if n_queries < SMALL_BATCH:
        faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Float32 copy of ``vectors`` with unit-length rows; all-zero rows stay zero."""
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def check_matrix(vectors: Any, what: str, dim: int | None = None) -> np.ndarray:
    """Check that ``vectors`` is a finite 2-D numeric matrix (of width ``dim`` when given)."""
    arr = np.asarray(vectors)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise DataError(None, f"{what} must be a 2-D numeric array, got shape {arr.shape} ({arr.dtype})")
    if dim is not None and arr.shape[1] != dim:
        raise DataError(None, f"{what} have dimension {arr.shape[1]}, the index has {dim}")
    if arr.size and not np.isfinite(arr.sum(dtype=np.float64)):
        raise DataError(None, f"{what} contain NaN or infinite values")
    return arr


def auto_kind(n: int, d: int) -> str:
    """Kind "auto": exact below ``AUTO_EXACT_MAX`` rows; IVF while its float32 vectors (n x d x 4 bytes)
    fit in ``AUTO_COMPRESS_BYTES``; IVF-PQ with re-ranking from disk above."""
    if n < AUTO_EXACT_MAX:
        return "flat"
    return "ivf" if n * d * 4 <= AUTO_COMPRESS_BYTES else "ivfpq"


def _trained_ivf(x: np.ndarray, kind: str, nlist: int | None, nprobe: int | None, seed: int) -> faiss.IndexIVF:
    """An IVF-flat or IVF-PQ index trained on a seeded sample of ``x`` (see ``VectorIndex.build``)."""
    n, d = x.shape
    if n == 0:
        raise DataError(None, f"an {kind.upper()} index needs at least one vector to train on")
    if nlist is None:
        nlist = min(round((1 if kind == "ivfpq" else 4) * math.sqrt(n)), n // 39)
    nlist = max(1, min(nlist, n))
    if kind == "ivfpq":
        index = new_ivfpq(d, n, nlist, seed, KMEANS_ITERATIONS)
        n_train = train_size(n, nlist, TRAIN_POINTS_PER_LIST)
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.niter = KMEANS_ITERATIONS
        index.cp.spherical = True
        n_train = min(n, TRAIN_POINTS_PER_LIST * nlist)
    index.nprobe = min(nlist, nprobe or (IVFPQ_NPROBE if kind == "ivfpq" else DEFAULT_NPROBE))
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, n_train, replace=False)) if n_train < n else slice(None)
    index.train(normalise(x[sample]))
    return index


def _read_index(path: Path) -> faiss.Index:
    """A FAISS index file of an inner-product index; ``DataError`` naming it when missing or unreadable."""
    if not path.is_file():
        raise DataError(path, "index file is missing")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise DataError(path, f"not a readable FAISS index ({str(exc).splitlines()[-1][:200]})") from exc
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise DataError(path, "FAISS index does not use inner-product search")
    return index


class VectorIndex:
    """One FAISS inner-product index over L2-normalised vectors; rows are int64 item positions."""

    def __init__(self, index: faiss.Index, store: RowStore | None = None, *, rerank: int = DEFAULT_RERANK) -> None:
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError("VectorIndex needs an inner-product FAISS index")
        if isinstance(index, faiss.IndexIVFPQ) != (store is not None):
            raise ValueError("an IVF-PQ index needs the store of its full vectors, other kinds none")
        self._index = index
        self._store = store
        self._shards = [index] if isinstance(index, faiss.IndexHNSW) else []  # HNSW: one graph per segment
        self._gpu = GpuMirror()  # flat, IVF: searched on a GPU copy where faiss has a GPU (retrieval/index/gpu.py)
        self._rerank = max(1, int(rerank))
        self._mark_saved()

    def _mark_saved(self) -> None:
        """Every row is now in files: ``save_segment`` writes the rows added after this point."""
        self._saved = self.ntotal
        self._saved_lists = list_sizes(self._index) if isinstance(self._index, faiss.IndexIVF) else None

    @classmethod
    def build(cls, vectors: np.ndarray, *, kind: str = "auto", nlist: int | None = None,
              nprobe: int | None = None, hnsw_m: int = 32, ef_search: int = DEFAULT_EF_SEARCH,
              ef_construction: int = 40, seed: int = 0, rerank: int = DEFAULT_RERANK) -> "VectorIndex":
        """Index ``vectors`` (n, d). ``kind``: "flat" (exact), "ivf", "ivfpq", "hnsw" or "auto".

        "auto": see ``auto_kind``. IVF uses ``nlist`` lists (default ~4 sqrt(n), at most n/39; "ivfpq"
        ~sqrt(n)), trained by seeded spherical k-means on a seeded sample of 40 points per list, and
        probes ``nprobe`` lists per query (default ``DEFAULT_NPROBE``, "ivfpq" ``IVFPQ_NPROBE``). "ivfpq"
        re-ranks ``rerank`` candidates per query with the full vectors (not saved: a loaded index has
        ``DEFAULT_RERANK``); until ``save`` it reads them from ``vectors`` itself (kept by reference,
        not copied: a memory map stays on disk).
        """
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")
        x = check_matrix(vectors, "vectors")
        n, d = x.shape
        kind = auto_kind(n, d) if kind == "auto" else kind
        store = None
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
        else:
            index = _trained_ivf(x, kind, nlist, nprobe, seed)
            store = RowStore([], d) if kind == "ivfpq" else None
        out = cls(index, store, rerank=rerank)
        out._append(x, keep=False)
        if store is not None:
            store.read_from(x)  # re-rank from the caller's rows (normalised on read) until saved
        return out

    @classmethod
    def load(cls, path: str | Path, segments: list[Path] | tuple[Path, ...] = ()) -> "VectorIndex":
        """Read an index written by ``save``, followed by the ``segments`` written by ``save_segment`` (each
        merged in, see ``retrieval.index.deltas``); a missing or unreadable file raises ``DataError``
        naming it."""
        path = Path(path)
        index = _read_index(path)
        out = cls(index, RowStore.load(sidecar(path), int(index.ntotal), int(index.d))
                  if isinstance(index, faiss.IndexIVFPQ) else None)
        for segment in segments:
            out.merge_segment(Path(segment))
        return out

    def merge_segment(self, path: Path) -> int:
        """Append the rows of the segment file ``path`` (``save_segment``); return how many it held."""
        before = self.ntotal
        if isinstance(self._index, faiss.IndexIVF):
            n = merge_ivf_segment(self._index, path)
            if self._store is not None:
                self._store.extend(RowStore.load(sidecar(path), n, self.dim))
        else:
            segment = _read_index(path)
            same_kind = isinstance(segment, faiss.IndexHNSW if self._shards else faiss.IndexFlat)
            if segment.d != self.dim or not same_kind:
                raise DataError(path, f"index segment is not a {self.kind} index of dimension {self.dim}")
            if self._shards:
                self._shards.append(segment)
                self._index = shard_view(self._shards)
            else:
                self._index.merge_from(segment, 0)
        self._mark_saved()
        return self.ntotal - before

    def save(self, path: str | Path) -> None:
        """Write the whole index atomically (temp file beside ``path``, then rename); HNSW segments are first
        joined into one graph.

        "ivfpq" first writes its full vectors to ``<path>.vectors.npy`` (also atomically), then the index.
        """
        if len(self._shards) > 1:
            self._join_shards()
        if self._store is not None:
            self._store.write(sidecar(path))
        with atomic_path(path) as tmp:
            faiss.write_index(self._index, str(tmp))
        self._mark_saved()

    def save_segment(self, path: str | Path) -> int:
        """Write only the rows added since the last save or load (a bundle's next segment) to ``path``
        (and "ivfpq" its ``.vectors.npy``), atomically; return how many. ``load(base, segments)`` reads them."""
        n = self.ntotal - self._saved
        if isinstance(self._index, faiss.IndexIVF):
            if self._store is not None:
                self._store.write(sidecar(path), start=self._saved)
            write_ivf_tail(self._index, self._saved_lists, self._saved, Path(path))
        else:
            if self._shards:
                segment = self._shards[-1] if n else new_hnsw_like(self._shards[0])
            else:
                segment = faiss.IndexFlatIP(self.dim)
                segment.add(self._index.reconstruct_n(self._saved, n))
            if segment.ntotal != n:
                raise ValueError(f"the rows since the last save ({n}) are not one segment")
            with atomic_path(path) as tmp:
                faiss.write_index(segment, str(tmp))
        self._mark_saved()
        return n

    def _join_shards(self) -> None:
        """HNSW: add the rows of the later segments' graphs to the first graph (the index before segments)."""
        first = self._shards[0]
        for shard in self._shards[1:]:
            for s in range(0, shard.ntotal, ADD_CHUNK):
                first.add(shard.reconstruct_n(s, min(ADD_CHUNK, shard.ntotal - s)))
        self._shards = [first]
        self._index = first

    @property
    def segments(self) -> int:
        """How many graphs the index searches together (HNSW after appends); 1 for the other kinds."""
        return max(1, len(self._shards))

    @property
    def kind(self) -> str:
        if self._shards:
            return "hnsw"
        if isinstance(self._index, faiss.IndexIVFPQ):
            return "ivfpq"
        return "ivf" if isinstance(self._index, faiss.IndexIVF) else "flat"

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def params(self) -> dict[str, int]:
        """Search-time parameters of the approximate kinds (nlist/nprobe, PQ m/nbits/rerank, M/efSearch)."""
        if isinstance(self._index, faiss.IndexIVFPQ):
            return {"nlist": int(self._index.nlist), "nprobe": int(self._index.nprobe),
                    "m": int(self._index.pq.M), "nbits": int(self._index.pq.nbits), "rerank": self._rerank}
        if isinstance(self._index, faiss.IndexIVF):
            return {"nlist": int(self._index.nlist), "nprobe": int(self._index.nprobe)}
        if self._shards:
            graph = self._shards[0].hnsw
            return {"M": int(graph.nb_neighbors(1)), "efSearch": int(graph.efSearch)}
        return {}

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None,
                          max_codes: int | None = None, rerank: int | None = None) -> None:
        """Trade speed for recall at search time (IVF ``nprobe``, HNSW ``ef_search``; IVF ``max_codes``: the
        most rows one query scans, so a list holding most rows, e.g. of near-identical vectors, is cut;
        "ivfpq" ``rerank``: candidates re-scored with the full vectors)."""
        if rerank is not None:
            self._rerank = max(1, int(rerank))
        if nprobe is not None and isinstance(self._index, faiss.IndexIVF):
            self._index.nprobe = max(1, min(nprobe, self._index.nlist))
        if max_codes is not None and isinstance(self._index, faiss.IndexIVF):
            self._index.max_codes = max(1, max_codes)
        for shard in self._shards if ef_search is not None else ():
            shard.hnsw.efSearch = max(1, ef_search)

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Append ``vectors`` (no retraining); return their new rows (int64)."""
        x = check_matrix(vectors, "vectors", self.dim)
        start = self.ntotal
        self._append(x, keep=True)
        return np.arange(start, self.ntotal, dtype=np.int64)

    def _append(self, x: np.ndarray, *, keep: bool) -> None:
        """Add ``x`` in chunks; ``keep``: also copy them into the re-rank store ("ivfpq"). HNSW adds to the
        graph of the rows not saved yet, a new one when every graph is saved (saved graphs stay as written)."""
        target = self._index
        if self._shards:
            if self.ntotal - self._shards[-1].ntotal < self._saved:
                self._shards.append(new_hnsw_like(self._shards[0]))
            target = self._shards[-1]
        for s in tqdm(range(0, len(x), ADD_CHUNK), desc=f"indexing ({self.kind})", unit="chunk",
                      disable=len(x) <= ADD_CHUNK):
            chunk = normalise(x[s:s + ADD_CHUNK])
            target.add(chunk)
            if keep and self._store is not None:
                self._store.append(chunk)
        if self._shards:
            self._index = shard_view(self._shards)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine neighbours of ``queries`` (q, d) or (d,): ``(scores, rows)``, both (q, k').

        k' = min(k, ntotal). Scores are float32 cosines, rows int64; an approximate index may leave
        slots empty, marked by row -1 and score -inf.
        """
        q = np.asarray(queries)
        q = check_matrix(q[None, :] if q.ndim == 1 else q, "queries", self.dim)
        k = min(int(k), self.ntotal)
        if k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        with _search_threads(len(q)):
            if self._store is not None:
                scores, rows = rerank(self._index, self._store, normalise(q), k, self._rerank)
            else:
                scores, rows = self._gpu.searcher(self._index).search(normalise(q), k)
        scores[rows < 0] = -np.inf
        return scores, rows.astype(np.int64, copy=False)
