"""Full-ranking metrics against a hand-computed example."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dgmrec_core.metrics import evaluate_ranking, rank_of_targets

# 3 users x 5 items. User 2 has no eval pair and is not averaged.
SCORES = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5],
                       [0.1, 0.2, 0.3, 0.4, 0.5],
                       [0.5, 0.4, 0.3, 0.2, 0.1]])
TRAIN = np.array([[0, 0], [1, 4], [2, 1]])
EVAL = np.array([[0, 2], [0, 4], [1, 3]])


def score_fn(users: torch.Tensor) -> torch.Tensor:
    return SCORES[users].clone()


def test_hand_computed_example():
    # User 0: item 0 excluded -> ranking 1, 2, 3, 4; relevant {2, 4}.
    #   @1: no hit. @2 and @3: item 2 at position 2 -> recall 1/2,
    #   NDCG = (1/log2 3) / (1 + 1/log2 3) = 0.6309298 / 1.6309298 = 0.3868528, hit 1.
    # User 1: item 4 excluded -> ranking 3, 2, 1, 0; relevant {3}: hit at position 1 -> all ones.
    result = evaluate_ranking(score_fn, 5, TRAIN, EVAL, ks=(1, 2, 3))
    ndcg0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg0 == pytest.approx(0.38685280723454163)
    expected = {"recall@1": 0.5, "ndcg@1": 0.5, "hit@1": 0.5,
                "recall@2": 0.75, "ndcg@2": (ndcg0 + 1) / 2, "hit@2": 1.0,
                "recall@3": 0.75, "ndcg@3": (ndcg0 + 1) / 2, "hit@3": 1.0}
    assert result.keys() == expected.keys()
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-12), key


def test_batches_do_not_change_results():
    full = evaluate_ranking(score_fn, 5, TRAIN, EVAL, ks=(1, 2, 3))
    assert evaluate_ranking(score_fn, 5, TRAIN, EVAL, ks=(1, 2, 3), batch_users=1) == pytest.approx(full)


def test_item_filter_keeps_only_those_items_eval_pairs():
    # Only item 2 is new: user 0 alone is evaluated, with relevant {2}; ranking still over all items.
    by_mask = evaluate_ranking(score_fn, 5, TRAIN, EVAL, ks=(1, 2),
                               item_filter=np.array([0, 0, 1, 0, 0], bool))
    by_index = evaluate_ranking(score_fn, 5, TRAIN, EVAL, ks=(1, 2), item_filter=np.array([2]))
    assert by_mask == by_index
    assert by_mask == pytest.approx({"recall@1": 0, "ndcg@1": 0, "hit@1": 0,
                                     "recall@2": 1, "ndcg@2": 1 / math.log2(3), "hit@2": 1})


def test_k_beyond_items_and_no_users():
    # K = 50 > 5 items: the whole ranking counts. User 0 hits at positions 2 and 4 (the excluded
    # item is last), user 1 at position 1.
    result = evaluate_ranking(score_fn, 5, TRAIN, EVAL, ks=(50,))
    ndcg0 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert result == pytest.approx({"recall@50": 1.0, "ndcg@50": (ndcg0 + 1) / 2, "hit@50": 1.0})
    empty = evaluate_ranking(score_fn, 5, TRAIN, np.zeros((0, 2), np.int64), ks=(10,))
    assert all(math.isnan(v) for v in empty.values())


def test_matches_a_brute_force_on_random_data():
    rng = np.random.default_rng(0)
    n_users, n_items = 30, 40
    scores = torch.from_numpy(rng.random((n_users, n_items)))
    all_pairs = np.array([(u, i) for u in range(n_users) for i in range(n_items)])
    chosen = all_pairs[rng.permutation(len(all_pairs))[:300]]
    train, test = chosen[:200], chosen[200:]
    result = evaluate_ranking(lambda u: scores[u].clone(), n_items, train, test, ks=(5,), batch_users=7)
    recalls, ndcgs = [], []
    for u in np.unique(test[:, 0]):
        s = scores[u].clone()
        s[train[train[:, 0] == u, 1]] = -np.inf
        top = torch.argsort(s, descending=True)[:5].tolist()
        rel = set(test[test[:, 0] == u, 1].tolist())
        hits = [t in rel for t in top]
        recalls.append(sum(hits) / len(rel))
        ideal = sum(1 / math.log2(r + 2) for r in range(min(len(rel), 5)))
        ndcgs.append(sum(h / math.log2(r + 2) for r, h in enumerate(hits)) / ideal)
    assert result["recall@5"] == pytest.approx(np.mean(recalls))
    assert result["ndcg@5"] == pytest.approx(np.mean(ndcgs))


def test_rank_of_targets():
    ranks = rank_of_targets(SCORES, torch.tensor([0, 0, 2]))
    assert ranks.tolist() == [0, 4, 2]
