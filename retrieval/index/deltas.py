"""Index segments on disk: the rows an append added, saved without rewriting the rows saved before.

A bundle stores each index as a base file plus one file per later segment (``retrieval.index.segments``),
and loading merges them into one index in memory with FAISS's own merge operations, so a search over a
segmented index is the same search as over the index the writer holds:

- flat: the segment is an ``IndexFlatIP`` of its rows; ``IndexFlatCodes.merge_from`` appends it.
- IVF and IVF-PQ: the segment is only the inverted-list entries of its rows (FAISS's ``InvertedLists``
  serialisation, ids counted from the segment's first row). The trained quantizer (and PQ codebook) is
  the base file's, so no segment repeats it, and ``InvertedLists.merge_from`` appends the entries to the
  base's lists exactly as ``IndexIVF.add`` would have.
- HNSW: a graph cannot be extended without rewriting it, so each segment is an HNSW graph of its own
  rows and the index searches them together through ``faiss.IndexShards`` (successive ids).
"""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from dgmrec_core.atomic import atomic_path
from dgmrec_core.errors import DataError


def list_sizes(index: faiss.IndexIVF) -> np.ndarray:
    """The number of entries in each inverted list of ``index``."""
    return np.array([index.invlists.list_size(i) for i in range(index.nlist)], dtype=np.int64)


def _entries(invlists: faiss.InvertedLists, list_no: int, code_size: int) -> tuple[np.ndarray, np.ndarray]:
    n = invlists.list_size(list_no)
    ids = faiss.rev_swig_ptr(invlists.get_ids(list_no), n)
    codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), n * code_size)
    return ids, codes


def write_ivf_tail(index: faiss.IndexIVF, saved: np.ndarray, first_row: int, path: Path) -> int:
    """Write the entries added to each list of ``index`` after its first ``saved[list]`` ones (the rows
    from ``first_row`` on) as an inverted-lists file, atomically; return how many rows it holds."""
    tail = faiss.ArrayInvertedLists(index.nlist, index.code_size)
    total = 0
    for list_no in np.flatnonzero(list_sizes(index) > saved):
        ids, codes = _entries(index.invlists, int(list_no), index.code_size)
        start = int(saved[list_no])
        local = np.ascontiguousarray(ids[start:] - first_row)
        chunk = np.ascontiguousarray(codes[start * index.code_size:])
        tail.add_entries(int(list_no), len(local), faiss.swig_ptr(local), faiss.swig_ptr(chunk))
        total += len(local)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        faiss.write_InvertedLists(tail, faiss.PyCallbackIOWriter(f.write))
    return total


def merge_ivf_segment(index: faiss.IndexIVF, path: Path) -> int:
    """Append the inverted-lists file ``path`` (written by ``write_ivf_tail``) to ``index``; return its rows.

    The file must fit the index (list count, code size) and hold each of its rows 0..n-1 exactly once;
    otherwise ``DataError`` naming it, and ``index`` is left as it was.
    """
    try:
        with open(path, "rb") as f:
            segment = faiss.read_InvertedLists(faiss.PyCallbackIOReader(f.read), 0)
    except (OSError, RuntimeError, MemoryError) as exc:
        raise DataError(path, f"not a readable index segment ({str(exc).splitlines()[-1][:200]})") from exc
    if segment is None or segment.nlist != index.nlist or segment.code_size != index.code_size:
        raise DataError(path, f"index segment does not fit its base index ({index.nlist} lists of "
                              f"{index.code_size}-byte codes)")
    sizes = np.array([segment.list_size(i) for i in range(segment.nlist)], dtype=np.int64)
    n = int(sizes.sum())
    ids = [_entries(segment, int(i), segment.code_size)[0] for i in np.flatnonzero(sizes)]
    seen = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    if len(seen) and (seen.min() < 0 or seen.max() >= n or len(np.unique(seen)) != n):
        raise DataError(path, f"index segment does not hold its {n} rows once each")
    index.invlists.merge_from(segment, index.ntotal)
    index.ntotal += n
    return n


def new_hnsw_like(index: faiss.IndexHNSW) -> faiss.IndexHNSWFlat:
    """An empty HNSW graph with ``index``'s dimension, degree and construction / search depth."""
    out = faiss.IndexHNSWFlat(index.d, index.hnsw.nb_neighbors(1), faiss.METRIC_INNER_PRODUCT)
    out.hnsw.efConstruction = index.hnsw.efConstruction
    out.hnsw.efSearch = index.hnsw.efSearch
    return out


def shard_view(shards: list[faiss.Index]) -> faiss.Index:
    """One index over ``shards`` (rows numbered on from shard to shard): the shard itself when alone."""
    if len(shards) == 1:
        return shards[0]
    view = faiss.IndexShards(shards[0].d, False, True)  # not threaded (OpenMP inside each), successive ids
    for shard in shards:
        view.add_shard(shard)
    view.metric_type = faiss.METRIC_INNER_PRODUCT
    return view
