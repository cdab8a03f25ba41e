"""FAISS-backed kNN for the model's modality graphs on large catalogs (a drop-in `KnnFn`), used by
``benchmarks/train_speed.py``; the index is the product's own ``VectorIndex``."""
from __future__ import annotations

import torch

from retrieval.index.vectors import VectorIndex


def faiss_knn(features: torch.Tensor, k: int, *, nprobe: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine neighbours of every row (itself included) with FAISS.

    ``VectorIndex`` of kind "auto": exact below ``AUTO_EXACT_MAX`` rows, IVF above. A query scans at
    most twice the rows of ``nprobe`` average lists: rows that are (nearly) all alike, such as generated
    features, fill one huge list that would otherwise be scanned whole by every query near it. Memory
    stays O(n d), never O(n^2).
    """
    x = features.detach().float().cpu().numpy()  # FAISS searches on the CPU here; results go back to the rows' device
    n = len(x)
    k = min(k, n)
    index = VectorIndex.build(x, kind="auto", nprobe=nprobe, seed=seed)
    if index.kind == "ivf":
        index.set_search_params(max_codes=2 * nprobe * n // index.params["nlist"])
    sims, idx = index.search(x, k)
    idx = torch.from_numpy(idx)
    sims = torch.from_numpy(sims)
    missing = idx < 0  # fewer than k found: point at self with zero weight
    idx[missing] = torch.arange(n)[:, None].expand(-1, k)[missing]
    sims[missing] = 0.0
    return idx.to(features.device), sims.to(features.device)
