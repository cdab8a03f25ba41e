"""Full-ranking evaluation: Recall@K, NDCG@K and Hit@K over all items, training items excluded."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm


def _csr(pairs: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, items) of (user, item) rows grouped by user."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    order = np.argsort(pairs[:, 0], kind="stable")
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(pairs[:, 0], minlength=n_users), out=indptr[1:])
    return indptr, pairs[order, 1]


def _gather(indptr: np.ndarray, values: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row in ``users``, item) of every entry of the given users' CSR rows, without a Python loop."""
    starts, lengths = indptr[users], indptr[users + 1] - indptr[users]
    rows = np.repeat(np.arange(len(users)), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return rows, values[np.repeat(starts, lengths) + offsets]


def _item_mask(item_filter: np.ndarray, n_items: int) -> np.ndarray:
    item_filter = np.asarray(item_filter)
    if item_filter.dtype == bool:
        if item_filter.shape != (n_items,):
            raise ValueError(f"a bool item_filter needs shape ({n_items},), got {item_filter.shape}")
        return item_filter
    mask = np.zeros(n_items, dtype=bool)
    mask[item_filter.astype(np.int64)] = True
    return mask


def evaluate_ranking(score_fn: Callable[[torch.Tensor], torch.Tensor], n_items: int,
                     train_pairs: np.ndarray, eval_pairs: np.ndarray, *, ks: Sequence[int] = (10, 20, 50),
                     batch_users: int = 1024, item_filter: np.ndarray | None = None,
                     progress: bool = False) -> dict[str, float]:
    """Rank all items for every user with an eval pair and average Recall, NDCG and Hit at each K.

    ``score_fn(users)`` gets a CPU LongTensor of user indices and returns (len(users), n_items) scores
    on any device; the returned tensor is modified in place. Items of ``train_pairs`` (pass train and
    valid when testing, if wanted) are excluded from each user's ranking. Recall@K = hits / the user's
    eval items (MMRec); NDCG@K uses binary relevance with an ideal DCG over min(|relevant|, K) items.
    ``item_filter`` (bool mask or indices) keeps only eval pairs of those items: the new-item setting,
    still ranking over all items. Keys: ``recall@K``, ``ndcg@K``, ``hit@K``; NaN when no user qualifies.
    """
    ks = sorted({int(k) for k in ks})
    eval_pairs = np.asarray(eval_pairs, dtype=np.int64).reshape(-1, 2)
    if item_filter is not None:
        eval_pairs = eval_pairs[_item_mask(item_filter, n_items)[eval_pairs[:, 1]]]
    train_pairs = np.asarray(train_pairs, dtype=np.int64).reshape(-1, 2)
    users = np.unique(eval_pairs[:, 0])
    names = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "hit")]
    if len(users) == 0:
        return {name: float("nan") for name in names}
    n_users = int(max(users.max(), train_pairs[:, 0].max(initial=-1))) + 1
    train_ptr, train_items = _csr(train_pairs, n_users)
    eval_ptr, eval_items = _csr(eval_pairs, n_users)

    top = min(ks[-1], n_items)
    discount = 1.0 / np.log2(np.arange(2, top + 2))
    ideal = np.concatenate([[0.0], np.cumsum(discount)])
    totals = dict.fromkeys(names, 0.0)
    starts = range(0, len(users), batch_users)
    with torch.no_grad():
        for start in tqdm(starts, desc="evaluate", unit="batch", disable=not progress):
            batch = users[start:start + batch_users]
            scores = score_fn(torch.from_numpy(batch))
            device = scores.device
            rows, cols = _gather(train_ptr, train_items, batch)
            scores[torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)] = -torch.inf
            ranked = torch.topk(scores, top, dim=1).indices
            relevant = torch.zeros(scores.shape, dtype=torch.bool, device=device)
            rows, cols = _gather(eval_ptr, eval_items, batch)
            relevant[torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)] = True
            hits = relevant.gather(1, ranked).cpu().numpy()
            n_rel = np.diff(eval_ptr)[batch]
            for k in ks:
                k_top = min(k, top)
                hit_k = hits[:, :k_top]
                n_hits = hit_k.sum(axis=1)
                totals[f"recall@{k}"] += float((n_hits / n_rel).sum())
                dcg = (hit_k * discount[:k_top]).sum(axis=1)
                totals[f"ndcg@{k}"] += float((dcg / ideal[np.minimum(n_rel, k_top)]).sum())
                totals[f"hit@{k}"] += float((n_hits > 0).sum())
    return {name: value / len(users) for name, value in totals.items()}


def rank_of_targets(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of ``targets[b]`` in row b of ``scores`` (items scoring strictly higher)."""
    target_scores = scores.gather(1, targets.view(-1, 1))
    return (scores > target_scores).sum(dim=1)
