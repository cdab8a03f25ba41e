"""FAISS-backed kNN for the model's modality graphs on large catalogs (a drop-in `KnnFn`)."""
from __future__ import annotations

import faiss
import numpy as np
import torch

EXACT_BELOW = 50_000


def faiss_knn(features: torch.Tensor, k: int, *, nprobe: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine neighbours of every row (itself included) with FAISS.

    Exact (flat inner product) below ``EXACT_BELOW`` rows; an IVF index with ~4 sqrt(n) lists above,
    trained on a seeded sample. A query scans at most twice the rows of ``nprobe`` average lists: rows
    that are (nearly) all alike, such as generated features, fill one huge list that would otherwise be
    scanned whole by every query near it. Memory stays O(n d), never O(n^2).
    """
    x = np.ascontiguousarray(features.detach().float().numpy())
    faiss.normalize_L2(x)
    n, d = x.shape
    k = min(k, n)
    if n < EXACT_BELOW:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(n, size=min(n, 64 * nlist), replace=False)
        index.train(x[sample])
        index.nprobe = nprobe
        index.max_codes = 2 * nprobe * n // nlist
    index.add(x)
    sims, idx = index.search(x, k)
    idx = torch.from_numpy(idx)
    sims = torch.from_numpy(sims)
    missing = idx < 0  # fewer than k found: point at self with zero weight
    idx[missing] = torch.arange(n)[:, None].expand(-1, k)[missing]
    sims[missing] = 0.0
    return idx, sims
