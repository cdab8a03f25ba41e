"""How good generated modalities are: cross-modal retrieval of the item's own real feature.

A generated (or imputed) feature of item i in modality m is good when, among the real m features of
the catalog, the one of item i is among the most cosine-similar to it (the DGMRec paper's Hit@K test).
Ranks are 1-based: rank 1 means the real feature is the nearest. The baseline is nearest-neighbour
imputation: copy the m feature of the item nearest in an observed modality.

Everything runs in row chunks: no dense items x items matrix beyond one chunk.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .features import observed_from_rows
from .metrics import rank_of_targets
from .model import DGMRec

MAX_CHUNK_BYTES = 64 << 20
Array = np.ndarray | torch.Tensor


def _unit(x: Array) -> torch.Tensor:
    """Row-normalised float32 tensor (all-zero rows stay zero)."""
    t = x.detach().float() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x, np.float32))
    return F.normalize(t.cpu(), dim=1)


def _numpy(x: Array) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def _chunk_rows(n_columns: int) -> int:
    return max(1, MAX_CHUNK_BYTES // max(1, 4 * n_columns))


def nearest_neighbours(src_feats: Array, pool: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Index of the item nearest (cosine on ``src_feats``) to each of ``items`` among the ``pool`` items
    (bool (N,)), never the item itself."""
    pool_idx = np.flatnonzero(np.asarray(pool, dtype=bool))
    if not len(pool_idx):
        raise ValueError("no item observes the modalities nearest-neighbour imputation needs")
    items = np.asarray(items, dtype=np.int64)
    x = _unit(src_feats)
    candidates = x[torch.from_numpy(pool_idx)]
    pool_t = torch.from_numpy(pool_idx)
    out = np.empty(len(items), dtype=np.int64)
    step = _chunk_rows(len(pool_idx))
    for start in range(0, len(items), step):
        block = torch.from_numpy(items[start:start + step])
        sims = x[block] @ candidates.T
        sims[block[:, None] == pool_t[None, :]] = -torch.inf
        best = sims.max(dim=1)
        if torch.isinf(best.values).any():
            raise ValueError("no neighbour in the pool besides the item itself")
        out[start:start + step] = pool_idx[best.indices.numpy()]
    return out


def nearest_neighbour_imputation(src_feats: Array, dst_feats: Array, src_observed: np.ndarray,
                                 dst_observed: np.ndarray, items: np.ndarray) -> np.ndarray:
    """dst features of ``items`` copied from their nearest item (cosine in the src modality) among the
    items observing both src and dst, excluding the item itself. Returns float32 (len(items), d_dst)."""
    pool = np.asarray(src_observed, dtype=bool) & np.asarray(dst_observed, dtype=bool)
    neighbours = nearest_neighbours(src_feats, pool, items)
    return _numpy(dst_feats)[neighbours].astype(np.float32, copy=False)


def ranks_of_real(pred: Array, real_all: Array, targets: np.ndarray,
                  candidates: np.ndarray | None = None) -> np.ndarray:
    """1-based rank of ``real_all[targets[b]]`` among the candidates' real features (bool (N,), all rows
    when None) by cosine similarity to ``pred[b]``; ties count in the target's favour."""
    real = _unit(real_all)
    n = real.shape[0]
    cand_idx = np.arange(n) if candidates is None else np.flatnonzero(np.asarray(candidates, dtype=bool))
    position = np.full(n, -1, dtype=np.int64)
    position[cand_idx] = np.arange(len(cand_idx))
    target_pos = position[np.asarray(targets, dtype=np.int64)]
    if (target_pos < 0).any():
        raise ValueError("every target must be among the candidates")
    p = _unit(pred)
    if p.shape[0] != len(target_pos):
        raise ValueError(f"{p.shape[0]} predictions for {len(target_pos)} targets")
    cand = real[torch.from_numpy(cand_idx)]
    ranks = np.empty(len(target_pos), dtype=np.int64)
    step = _chunk_rows(len(cand_idx))
    for start in range(0, len(target_pos), step):
        scores = p[start:start + step] @ cand.T
        ranks[start:start + step] = rank_of_targets(scores, torch.from_numpy(target_pos[start:start + step])).numpy() + 1
    return ranks


def hit_at_k(ranks: np.ndarray, ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    """Share of ranks <= K for each K (``hit@K``); NaN without ranks."""
    ranks = np.asarray(ranks)
    return {f"hit@{k}": float((ranks <= k).mean()) if ranks.size else float("nan") for k in ks}


def recall_at(ranks: np.ndarray, ks: Sequence[int] = (1, 10, 50)) -> dict[str, float]:
    """Recall@K with one relevant item per query (= Hit@K), keys ``recall@K``; NaN without ranks."""
    return {f"recall@{k}": v for k, v in zip(ks, hit_at_k(ranks, ks).values())}


def median_rank(ranks: np.ndarray) -> float:
    """Median of the 1-based ranks; NaN without ranks."""
    ranks = np.asarray(ranks)
    return float(np.median(ranks)) if ranks.size else float("nan")


def _summary(ranks: np.ndarray, ks: Sequence[int],
             metric: Callable[..., dict[str, float]] = hit_at_k) -> dict[str, float]:
    return {**metric(ranks, ks), "median_rank": median_rank(ranks)}


def _check(model: DGMRec, real: Sequence[Array], observed: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    observed = np.asarray(observed, dtype=bool)
    M = model.n_modalities
    if M < 2:
        raise ValueError("cross-modal evaluation needs a model with at least two modalities")
    if len(real) != M or observed.shape != (model.n_items, M):
        raise ValueError(f"need {M} real feature matrices and an observed mask of shape ({model.n_items}, {M})")
    if not np.array_equal(observed, model.observed.cpu().numpy()):
        raise ValueError("observed differs from the mask the model was trained with")
    return [_numpy(r) for r in real], observed


def _modality(model: DGMRec, m: int | str) -> int:
    return model.names.index(m) if isinstance(m, str) else int(m)


def evaluate_generation(model: DGMRec, real: Sequence[Array], observed: np.ndarray, *,
                        ks: Sequence[int] = (10, 20),
                        generated: Sequence[Array] | None = None) -> dict[str, dict[str, Any]]:
    """Cross-modal retrieval test of the features the model generates for its missing modalities.

    For every modality m (key: its name) and every item with m unobserved in training (``observed``,
    which must be the model's mask) but a real (non-zero) row in ``real[m]``, rank all items' real m
    features by cosine to ``model.generated_features(noise=False)[m]``. Groups: ``missing_one`` (only m
    missing; also scored for nearest-neighbour imputation from the first other modality, ``nn``) and
    ``missing_all`` (every modality missing, with two modalities: both), each with ``n``, Hit@K and the
    median rank. Per item, for display: ``items``, ``ranks``, ``group``, ``nn_ranks`` and ``nn_items``
    (the item NN copied from; both -1 where NN is undefined). ``n_candidates`` and ``nn_source`` too.
    ``generated`` (all items, per modality) scores other features instead, e.g. a generation variant.
    """
    real, observed = _check(model, real, observed)
    M = model.n_modalities
    model.eval()
    generated = model.generated_features(noise=False) if generated is None else [_unit(x) for x in generated]
    has_real = [observed_from_rows(r) for r in real]
    n_missing = (~observed).sum(axis=1)
    out: dict[str, dict[str, Any]] = {}
    for m, name in enumerate(model.names):
        targets = np.flatnonzero(~observed[:, m] & has_real[m])
        ranks = ranks_of_real(generated[m][torch.from_numpy(targets)], real[m], targets, has_real[m])
        one, every = n_missing[targets] == 1, n_missing[targets] == M
        src = next(a for a in range(M) if a != m)
        nn_items = np.full(len(targets), -1, dtype=np.int64)
        nn_ranks = np.full(len(targets), -1, dtype=np.int64)
        if one.any():
            nn_items[one] = nearest_neighbours(real[src], observed[:, src] & observed[:, m], targets[one])
            nn_ranks[one] = ranks_of_real(real[m][nn_items[one]], real[m], targets[one], has_real[m])
        out[name] = {
            "n_candidates": int(has_real[m].sum()), "nn_source": model.names[src],
            "missing_one": {"n": int(one.sum()), "dgmrec": _summary(ranks[one], ks), "nn": _summary(nn_ranks[one], ks)},
            "missing_all": {"n": int(every.sum()), "dgmrec": _summary(ranks[every], ks)},
            "items": targets, "ranks": ranks, "nn_ranks": nn_ranks, "nn_items": nn_items,
            "group": np.where(one, "missing_one", np.where(every, "missing_all", "missing_some")),
        }
    return out


def query_retrieval(model: DGMRec, real: Sequence[Array], observed: np.ndarray, items: np.ndarray | None,
                    src: int | str, dst: int | str, *, ks: Sequence[int] = (1, 10, 50)) -> dict[str, Any]:
    """Query-style retrieval: the real src feature of each item -> ``model.query_to_modality`` (no user:
    catalog mean preference) -> rank of the item's own real dst feature among all items' real dst features.

    ``items`` default to the items with every modality held out of training; items without a real src or
    dst row are left out. Baseline ``nn``: the dst feature of the nearest item by src feature among the
    items observing src and dst. Returns ``n``, ``dgmrec`` and ``nn`` (Recall@K, median rank) and per
    item ``items``, ``ranks``, ``nn_ranks``, ``nn_items``.
    """
    real_np, observed = _check(model, real, observed)
    s, d = _modality(model, src), _modality(model, dst)
    if s == d:
        raise ValueError("src and dst must be different modalities")
    has_src, has_dst = observed_from_rows(real_np[s]), observed_from_rows(real_np[d])
    items = np.flatnonzero(~observed.any(axis=1)) if items is None else np.asarray(items, dtype=np.int64)
    items = items[has_src[items] & has_dst[items]]
    model.eval()
    pred = model.query_to_modality(s, d, torch.from_numpy(np.ascontiguousarray(real_np[s][items])))
    ranks = ranks_of_real(pred, real_np[d], items, has_dst)
    nn_items = nearest_neighbours(real_np[s], observed[:, s] & observed[:, d], items)
    nn_ranks = ranks_of_real(real_np[d][nn_items], real_np[d], items, has_dst)
    return {"src": model.names[s], "dst": model.names[d], "n": len(items), "n_candidates": int(has_dst.sum()),
            "dgmrec": _summary(ranks, ks, recall_at), "nn": _summary(nn_ranks, ks, recall_at),
            "items": items, "ranks": ranks, "nn_ranks": nn_ranks, "nn_items": nn_items}
