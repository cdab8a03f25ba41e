"""Items without a training interaction get their collaborative embedding from their content neighbours."""
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from conftest import make_new_item_toy_dataset, make_toy_dataset
from dgmrec_core.config import DGMRecConfig
from dgmrec_core.model import DGMRec
from dgmrec_core.trainer import fit

FAST = DGMRecConfig(epochs=8, eval_every=8, batch_size=128, knn_k=5, gen_refit_steps=0, seed=0)


def test_untrained_rows_become_the_weighted_mean_of_trained_neighbours():
    dataset = make_new_item_toy_dataset()
    model = DGMRec(FAST, dataset.interactions.n_users, dataset.interactions.n_items,
                   [m.dim for m in dataset.modalities], [m.name for m in dataset.modalities])
    model.attach(dataset)
    cold = model.untrained_items()
    trained_counts = np.bincount(dataset.interactions.train[:, 1], minlength=dataset.interactions.n_items)
    assert torch.equal(cold, torch.as_tensor(trained_counts == 0)) and cold[dataset.new_items].all()

    e = torch.randn(dataset.interactions.n_items, FAST.embedding_size)
    filled = model.content_neighbour_ids(e)
    assert torch.equal(filled[~cold], e[~cold])  # trained items keep their own embedding
    dense = sum(model.graphs[f"mm_{m}"].to_dense() for m in range(model.n_modalities))
    weights = dense[:, ~cold]  # edges to trained items only, over both modalities
    has = cold & (weights.sum(1) > 0)
    expected = weights[has] @ e[~cold] / weights[has].sum(1, keepdim=True)
    assert has.sum() >= len(dataset.new_items) // 2
    torch.testing.assert_close(filled[has], expected)
    assert torch.equal(filled[cold & ~has], e[cold & ~has])  # nothing to borrow from: unchanged


def test_new_items_are_recommended_from_content_and_the_paper_option_keeps_the_random_ids():
    """Users like one of two item clusters that the features reveal: with the default, the unseen items
    of a user's cluster rank high; the paper's rule leaves them at random (near chance)."""
    dataset = make_new_item_toy_dataset()
    recall = {}
    for option in ("content-neighbours", "paper"):
        result = fit(dataset, replace(FAST, untrained_items=option), progress=False)
        recall[option] = result.test_new_items["recall@10"]
    chance = 10 / dataset.interactions.n_items
    assert recall["content-neighbours"] > max(2 * chance, recall["paper"] + 0.1), recall


def test_items_added_after_training_borrow_their_neighbours_collaborative_embedding():
    """The add-items path (no retraining): an added copy of a trained item's features gets, on top of the
    content part, the collaborative embedding of that item's trained look-alikes; 'paper' adds none."""
    dataset = make_toy_dataset(missing_ratio=0.0)
    result = fit(dataset, FAST, progress=False)
    model = result.model.eval()
    feats = [torch.as_tensor(m.values[:4]) for m in dataset.modalities]
    with_ids = model.cold_item_embeddings(feats)
    model.config = replace(FAST, untrained_items="paper")
    content = model.cold_item_embeddings(feats)
    borrowed = with_ids - content
    e_i = model.cf_embeddings()[1]
    same_cluster = e_i[torch.arange(dataset.interactions.n_items) % 2 == 0].mean(0)
    other_cluster = e_i[torch.arange(dataset.interactions.n_items) % 2 == 1].mean(0)
    for row in (0, 2):  # items 0 and 2 are of cluster 0
        cos = F.cosine_similarity(borrowed[row], torch.stack([same_cluster, other_cluster]))
        assert cos[0] > cos[1] + 0.2, cos
    assert borrowed.norm(dim=1).min() > 0
