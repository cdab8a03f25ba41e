"""Evaluation of generated modalities: NN imputation, ranks of the real feature, Hit/Recall, end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dgmrec_core import generation_eval
from dgmrec_core.config import DGMRecConfig
from dgmrec_core.data import Dataset, Interactions, Modality
from dgmrec_core.generation_eval import (evaluate_generation, hit_at_k, median_rank, nearest_neighbour_imputation,
                                         query_retrieval, ranks_of_real, recall_at)
from dgmrec_core.trainer import fit

# Source modality: item 0 is [5, 0] (cosine, not dot product, must decide), item 5 does not observe src.
SRC = np.array([[5, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [1, -0.1], [1, -0.1]], dtype=np.float32)
DST = np.arange(18, dtype=np.float32).reshape(6, 3) + 1
SRC_OBS = np.array([True, True, True, True, True, False])
DST_OBS = np.array([True, True, True, True, False, True])


def test_nn_imputation_copies_the_nearest_item_observing_both():
    # Item 4: cos to item 0 = 1/1.005, to item 1 = 0.89/(0.906*1.005); item 5 is identical but lacks src.
    # Item 0 is in the pool itself: its nearest other item is item 1.
    out = nearest_neighbour_imputation(SRC, DST, SRC_OBS, DST_OBS, np.array([4, 0]))
    np.testing.assert_array_equal(out, DST[[0, 1]])
    with pytest.raises(ValueError):
        nearest_neighbour_imputation(SRC, DST, SRC_OBS, np.zeros(6, dtype=bool), np.array([4]))


def test_rank_is_one_when_prediction_is_the_real_feature():
    real = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
    targets = np.arange(0, 40, 3)
    np.testing.assert_array_equal(ranks_of_real(real[targets] * 2.5, real, targets), np.ones(len(targets)))


def test_rank_on_a_hand_made_case():
    real = np.array([[1, 0], [0, 1], [1, 1], [-1, 0]], dtype=np.float32)
    pred = np.array([[1, 0.2]], dtype=np.float32)
    # cos to items: 0.981, 0.196 (target 1), 0.832, -0.981 -> items 0 and 2 rank above the target.
    assert ranks_of_real(pred, real, np.array([1])).tolist() == [3]
    assert ranks_of_real(pred, real, np.array([1]), np.array([False, True, True, True])).tolist() == [2]
    with pytest.raises(ValueError):
        ranks_of_real(pred, real, np.array([0]), np.array([False, True, True, True]))


def test_chunking_does_not_change_ranks(monkeypatch):
    rng = np.random.default_rng(1)
    real, pred = rng.normal(size=(30, 4)).astype(np.float32), rng.normal(size=(12, 4)).astype(np.float32)
    targets = rng.choice(30, 12, replace=False)
    expected = ranks_of_real(pred, real, targets)
    monkeypatch.setattr(generation_eval, "MAX_CHUNK_BYTES", 4 * 30 * 5)  # 5 rows per chunk
    np.testing.assert_array_equal(ranks_of_real(pred, real, targets), expected)
    monkeypatch.setattr(generation_eval, "MAX_CHUNK_BYTES", 4 * 6 * 2)
    np.testing.assert_array_equal(nearest_neighbour_imputation(SRC, DST, SRC_OBS, DST_OBS, np.array([4, 0, 2])),
                                  DST[[0, 1, 3]])


def test_hit_recall_and_median_by_hand():
    ranks = np.array([1, 3, 10, 11, 25])
    assert hit_at_k(ranks) == {"hit@10": 0.6, "hit@20": 0.8}
    assert recall_at(ranks) == {"recall@1": 0.2, "recall@10": 0.6, "recall@50": 1.0}
    assert median_rank(ranks) == 10.0
    assert np.isnan(hit_at_k(np.array([]))["hit@10"]) and np.isnan(median_rank(np.array([])))


def tiny_dataset(n_users: int = 30, n_items: int = 50, seed: int = 0) -> tuple[Dataset, list[np.ndarray]]:
    """Two correlated modalities; items 0-9 lose image, 10-19 lose text, 20-34 lose both."""
    rng = np.random.default_rng(seed)
    pairs = np.unique(np.stack([rng.integers(0, n_users, 600), rng.integers(0, n_items, 600)], 1), axis=0)
    pairs = pairs[rng.permutation(len(pairs))]
    n = len(pairs)
    inter = Interactions(n_users, n_items, pairs[: int(0.8 * n)], pairs[int(0.8 * n): int(0.9 * n)],
                         pairs[int(0.9 * n):])
    latent = rng.normal(size=(n_items, 4))
    image = (latent @ rng.normal(size=(4, 8)) + 0.1 * rng.normal(size=(n_items, 8))).astype(np.float32)
    text = (latent @ rng.normal(size=(4, 6)) + 0.1 * rng.normal(size=(n_items, 6))).astype(np.float32)
    obs_image, obs_text = np.ones(n_items, dtype=bool), np.ones(n_items, dtype=bool)
    obs_image[0:10] = obs_text[10:20] = False
    obs_image[20:35] = obs_text[20:35] = False
    data = Dataset(inter, [Modality("image", image, obs_image), Modality("text", text, obs_text)])
    return data, [image, text]


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    data, real = tiny_dataset()
    config = DGMRecConfig(epochs=2, batch_size=128, knn_k=3, seed=0)
    return fit(data, config, progress=False).model, data, real


def test_evaluate_generation_reports_both_groups(trained):
    model, data, real = trained
    out = evaluate_generation(model, real, data.observed)
    assert set(out) == {"image", "text"}
    for name, lost_one in (("image", range(0, 10)), ("text", range(10, 20))):
        res = out[name]
        assert res["missing_one"]["n"] == 10 and res["missing_all"]["n"] == 15
        assert res["n_candidates"] == 50 and res["nn_source"] == ("text" if name == "image" else "image")
        assert set(res["items"].tolist()) == set(lost_one) | set(range(20, 35))
        assert ((res["ranks"] >= 1) & (res["ranks"] <= 50)).all()
        one = res["group"] == "missing_one"
        assert (res["nn_ranks"][one] >= 1).all() and (res["nn_ranks"][~one] == -1).all()
        assert (res["nn_items"][~one] == -1).all()
        for group in ("missing_one", "missing_all"):
            assert set(res[group]["dgmrec"]) == {"hit@10", "hit@20", "median_rank"}
        assert res["missing_one"]["dgmrec"]["hit@10"] == pytest.approx(float((res["ranks"][one] <= 10).mean()))


def test_evaluate_generation_checks_the_mask(trained):
    model, data, real = trained
    with pytest.raises(ValueError, match="mask"):
        evaluate_generation(model, real, np.ones_like(data.observed))


def test_query_retrieval_on_items_missing_both(trained):
    model, data, real = trained
    out = query_retrieval(model, real, data.observed, None, "text", "image")
    assert (out["src"], out["dst"], out["n"]) == ("text", "image", 15)
    np.testing.assert_array_equal(out["items"], np.arange(20, 35))
    for method in ("dgmrec", "nn"):
        assert set(out[method]) == {"recall@1", "recall@10", "recall@50", "median_rank"}
        assert out[method]["recall@50"] == 1.0  # only 50 candidates
    assert np.isin(out["nn_items"], np.arange(35, 50)).all()  # only complete items are copied from
