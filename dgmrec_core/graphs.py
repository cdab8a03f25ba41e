"""Sparse graphs: the user-item LightGCN adjacency, mean-aggregation matrices and modality kNN graphs.

Nothing here builds a dense items x items matrix: kNN search runs in row chunks whose size bounds the
memory, and every graph is a torch sparse tensor.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

# A kNN backend: (features (n, d) float tensor, k) -> (neighbour indices (n, k) long, similarities (n, k)).
KnnFn = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def _sparse(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A coalesced sparse COO tensor (duplicate entries summed)."""
    idx = torch.stack([rows.long(), cols.long()])
    return torch.sparse_coo_tensor(idx, vals.float(), shape, check_invariants=False).coalesce()


def bipartite_norm_adj(n_users: int, n_items: int, train: np.ndarray) -> torch.Tensor:
    """Symmetric-normalised adjacency D^-1/2 A D^-1/2 of the (users + items) interaction graph."""
    u = torch.as_tensor(train[:, 0], dtype=torch.long)
    i = torch.as_tensor(train[:, 1], dtype=torch.long) + n_users
    rows, cols = torch.cat([u, i]), torch.cat([i, u])
    n = n_users + n_items
    deg = torch.bincount(rows, minlength=n).float()
    inv_sqrt = deg.clamp(min=1).pow(-0.5)
    vals = inv_sqrt[rows] * inv_sqrt[cols]
    return _sparse(rows, cols, vals, (n, n))


def mean_aggregators(n_users: int, n_items: int, train: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(users x items, items x users) row-normalised interaction matrices.

    The first averages item vectors over each user's items; the second averages user vectors over each
    item's users (rows of items nobody interacted with are empty, so their mean is zero).
    """
    u = torch.as_tensor(train[:, 0], dtype=torch.long)
    i = torch.as_tensor(train[:, 1], dtype=torch.long)
    deg_u = torch.bincount(u, minlength=n_users).float().clamp(min=1)
    deg_i = torch.bincount(i, minlength=n_items).float().clamp(min=1)
    user_mean = _sparse(u, i, 1.0 / deg_u[u], (n_users, n_items))
    item_mean = _sparse(i, u, 1.0 / deg_i[i], (n_items, n_users))
    return user_mean, item_mean


def chunked_cosine_knn(features: torch.Tensor, k: int, *, max_chunk_bytes: int = 256 << 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k cosine neighbours of every row (itself included), computed in row chunks.

    Peak extra memory is about ``max_chunk_bytes`` whatever the number of rows.
    """
    x = F.normalize(features.float(), dim=1)
    n = x.shape[0]
    k = min(k, n)
    chunk = max(1, min(n, max_chunk_bytes // max(1, 4 * n)))
    idx_out = torch.empty(n, k, dtype=torch.long, device=x.device)
    sim_out = torch.empty(n, k, device=x.device)
    for start in range(0, n, chunk):
        sims = x[start:start + chunk] @ x.T
        top = sims.topk(k, dim=1)
        sim_out[start:start + chunk] = top.values
        idx_out[start:start + chunk] = top.indices
    return idx_out, sim_out


def normalised_knn(indices: torch.Tensor, sims: torch.Tensor) -> torch.Tensor:
    """Sparse D^-1/2 A D^-1/2 of a kNN graph whose row i holds ``sims[i]`` at columns ``indices[i]``.

    D is the row sum of A (as in LATTICE-style modality graphs); non-positive sums are guarded.
    """
    n, k = indices.shape
    rows = torch.arange(n, device=indices.device).repeat_interleave(k)
    cols = indices.reshape(-1)
    vals = sims.reshape(-1).clamp(min=0)
    rowsum = torch.zeros(n, device=vals.device).index_add_(0, rows, vals)
    inv_sqrt = torch.where(rowsum > 0, rowsum.clamp(min=1e-12).pow(-0.5), torch.zeros_like(rowsum))
    vals = inv_sqrt[rows] * vals * inv_sqrt[cols]
    keep = vals > 0
    return _sparse(rows[keep], cols[keep], vals[keep], (n, n))


def modality_knn_graph(features: torch.Tensor, observed: torch.Tensor, k: int,
                       knn_fn: KnnFn = chunked_cosine_knn, *, observed_only: bool = False) -> torch.Tensor:
    """Normalised kNN graph of one modality with items missing it cut off from the others.

    As in the paper's code, the kNN runs over all rows (missing rows hold their imputed values), then
    every edge touching a missing item is removed; each missing item keeps a self-loop of weight 1.
    Imputed rows are all alike and often nearest to everything, so this can leave observed items with
    few neighbours; ``observed_only`` searches among observed items instead, so each keeps k of them.
    """
    n = features.shape[0]
    missing = ~observed
    if observed_only or not missing.any() or not observed.any():
        idx, sims = _knn_among(features, torch.nonzero(observed).squeeze(1), k, knn_fn)
    elif bool((features[missing] == features[missing][:1]).all()):
        idx, sims = _knn_with_identical_missing(features, observed, k, knn_fn)
    else:
        idx, sims = knn_fn(features, k)
    keep = ~(missing[:, None] | missing[idx])
    sims = torch.where(keep, sims, torch.zeros_like(sims))
    idx = torch.cat([idx, torch.arange(n, device=idx.device)[:, None]], dim=1)
    sims = torch.cat([sims, missing.float()[:, None]], dim=1)
    return normalised_knn(idx, sims)


def _knn_among(features: torch.Tensor, rows: torch.Tensor, k: int, knn_fn: KnnFn) -> tuple[torch.Tensor, torch.Tensor]:
    """kNN of ``rows`` among ``rows``, as (n, k) arrays; other rows point at themselves with weight 0."""
    n = features.shape[0]
    if len(rows) == 0:
        return torch.arange(n, device=features.device)[:, None], torch.zeros(n, 1, device=features.device)
    sub_idx, sub_sims = knn_fn(features[rows], k)
    return _spread(n, rows, rows[sub_idx], sub_sims)


def _spread(n: int, rows: torch.Tensor, neighbours: torch.Tensor, sims: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, k) kNN arrays holding ``neighbours``/``sims`` at ``rows``; every other row points at itself, weight 0."""
    idx = torch.arange(n, device=neighbours.device)[:, None].repeat(1, neighbours.shape[1])
    idx[rows] = neighbours
    full = torch.zeros(n, neighbours.shape[1], device=sims.device)
    full[rows] = sims
    return idx, full


def _knn_with_identical_missing(features: torch.Tensor, observed: torch.Tensor, k: int,
                                knn_fn: KnnFn) -> tuple[torch.Tensor, torch.Tensor]:
    """The observed items' part of the kNN over all rows when every missing row holds the same vector.

    The search runs among the observed rows plus one copy of the missing rows' vector; where that copy
    ranks, the missing rows take as many places (up to k) in the full ranking, so an observed neighbour
    ranked after it keeps its edge only if it would still be in the top k. Edges to missing rows are cut
    by the caller, so this gives the paper's graph without searching the (large, identical) missing rows.
    """
    rows = torch.nonzero(observed).squeeze(1)
    n_missing = int((~observed).sum())
    copy = torch.nonzero(~observed)[0]
    sub_idx, sub_sims = knn_fn(features[torch.cat([rows, copy])], min(k, len(rows) + 1))
    sub_idx, sub_sims = sub_idx[:-1], sub_sims[:-1]  # the copy's own neighbours are not needed
    is_copy = sub_idx == len(rows)
    position = torch.arange(sub_idx.shape[1], device=sub_idx.device).expand_as(sub_idx)
    after_copy = (is_copy.cumsum(1) - is_copy.long()) > 0
    rank = torch.where(after_copy, position + n_missing - 1, position)
    kept = ~is_copy & (rank < k)
    neighbours = torch.where(kept, torch.cat([rows, rows[:1]])[sub_idx], rows[:, None])
    return _spread(features.shape[0], rows, neighbours, torch.where(kept, sub_sims, torch.zeros_like(sub_sims)))


class CsrProduct(torch.autograd.Function):
    """``graph @ h`` for a constant sparse CSR ``graph`` whose transpose (CSR too) is given for the backward.

    torch's own backward converts the transpose to CSR on every call; a training step multiplies by the
    same few graphs many times, so the transpose is made once per graph instead.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, graph: torch.Tensor, graph_t: torch.Tensor) -> torch.Tensor:
        ctx.graph_t = graph_t
        return torch.sparse.mm(graph, h)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return torch.sparse.mm(ctx.graph_t, grad), None, None


def refresh_rows(old: torch.Tensor, rebuilt: torch.Tensor, rows: torch.Tensor, lam: float) -> torch.Tensor:
    """Blend rows ``rows`` of ``old`` towards ``rebuilt``: new = lam * rebuilt + (1 - lam) * old.

    All other rows of ``old`` stay as they were.
    """
    n = old.shape[0]
    in_set = torch.zeros(n, dtype=torch.bool, device=old.device)
    in_set[rows] = True
    o_idx, o_val = old.indices(), old.values()
    r_idx, r_val = rebuilt.indices(), rebuilt.values()
    o_scale = torch.where(in_set[o_idx[0]], torch.full_like(o_val, 1 - lam), torch.ones_like(o_val))
    r_keep = in_set[r_idx[0]]
    idx = torch.cat([o_idx, r_idx[:, r_keep]], dim=1)
    vals = torch.cat([o_val * o_scale, r_val[r_keep] * lam])
    return torch.sparse_coo_tensor(idx, vals, (n, n), check_invariants=False).coalesce()


def csr_rows(graph: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` of the sparse CSR ``graph``, as a CSR matrix of shape (len(rows), graph columns).

    Vectorised: cost proportional to the selected rows' stored entries, not to the graph.
    """
    crow, col, val = graph.crow_indices(), graph.col_indices(), graph.values()
    start = crow[rows]
    count = crow[rows + 1] - start
    new_crow = torch.cat([count.new_zeros(1), count.cumsum(0)])
    total = int(new_crow[-1])
    pick = (torch.repeat_interleave(start - new_crow[:-1], count, output_size=total)
            + torch.arange(total, device=crow.device))
    return torch.sparse_csr_tensor(new_crow, col[pick], val[pick], (len(rows), graph.shape[1]),
                                   check_invariants=False)


def column_block(sub: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The columns ``cols`` (distinct) of the sparse CSR ``sub``, renumbered 0..len(cols)-1 in ``cols``' order."""
    crow, col, val = sub.crow_indices(), sub.col_indices(), sub.values()
    position = torch.full((sub.shape[1],), -1, dtype=torch.long, device=col.device)
    position[cols] = torch.arange(len(cols), device=col.device)
    new_col = position[col]
    keep = new_col >= 0
    row_of = torch.repeat_interleave(torch.arange(sub.shape[0], device=col.device), crow.diff(), output_size=len(col))
    counts = torch.bincount(row_of[keep], minlength=sub.shape[0])
    new_crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return torch.sparse_csr_tensor(new_crow, new_col[keep], val[keep], (sub.shape[0], len(cols)),
                                   check_invariants=False)


def sparse_product(graph: torch.Tensor, h: torch.Tensor,
                   transpose: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
    """``graph @ h`` for a sparse CSR ``graph``; when ``h`` needs a gradient, through ``CsrProduct`` with the
    CSR transpose ``transpose()`` gives (a graph multiplied many times caches it) or, without it, one made
    here (a graph used once)."""
    if not (torch.is_grad_enabled() and h.requires_grad):
        return torch.sparse.mm(graph, h)
    return CsrProduct.apply(h, graph, transpose() if transpose is not None else graph.t().to_sparse_csr())
