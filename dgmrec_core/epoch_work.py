"""The per-epoch procedures of DGMRec training besides generation (docs/DESIGN.md section 2): fitting the CLUB
estimators and refreshing the kNN rows of generated items."""
from __future__ import annotations

import torch

from .graphs import KnnFn, chunked_cosine_knn, normalised_knn, refresh_rows


def club_step(model, optimizer: torch.optim.Optimizer, steps: int, parts: tuple[list, list] | None = None,
              sample: int = 2048) -> float:
    """Fit ``model``'s (a DGMRec) CLUB estimators on (specific, general) pairs of random items; returns the last
    loss. ``parts``: the propagated (general, specific) parts per modality (a whole-catalog pass when None)."""
    if parts is None:
        with torch.no_grad():
            p = model.forward_parts()
        parts = (p.gf, p.sf)
    gf, sf = parts
    loss = torch.zeros(())
    for _ in range(steps):
        idx = torch.randperm(model.n_items)[:sample]
        loss = sum(model.club[m].learning_loss(sf[m][idx], gf[m][idx]) for m in range(model.n_modalities))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def refresh_graphs(model, knn_fn: KnnFn = chunked_cosine_knn) -> None:
    """Blend the kNN rows of ``model``'s generated items towards a graph rebuilt on the current features."""
    for m in range(model.n_modalities):
        idx, sims = knn_fn(model.features(m), model.config.knn_k)
        rebuilt = normalised_knn(idx, sims)
        rows = torch.nonzero(~model.observed[:, m]).squeeze(1)
        old = model.graphs[f"mm_{m}"].to_sparse_coo().coalesce()
        model.graphs[f"mm_{m}"] = refresh_rows(old, rebuilt, rows, model.config.avg_lambda).to_sparse_csr()
