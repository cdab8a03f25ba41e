"""Batch-local training (docs/DESIGN.md, "Batch-local training"): with a fresh cache a batch's local parts
equal the whole-catalog parts at its rows, the loss matches, gradients reach only what the batch touches,
and training in that mode learns."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import make_toy_dataset
from dgmrec_core import batch_local
from dgmrec_core.config import DGMRecConfig
from dgmrec_core.graphs import column_block, csr_rows
from dgmrec_core.lightgcn import build_model
from dgmrec_core.trainer import NegativeSampler, fit

# float32 rows: these tests compare the batch-local estimator with the whole-catalog one to float rounding
# (bfloat16 rows, 'auto' on a CPU with bfloat16 units, are compared with float32 in tests/test_feature_rows.py)
FAST = DGMRecConfig(epochs=4, batch_size=128, patience=50, knn_k=5, refresh_every=2, seed=7,
                    feature_precision="float32")


def _model(config: DGMRecConfig = FAST):
    dataset = make_toy_dataset()
    torch.manual_seed(config.seed)
    model = build_model(config, dataset.n_users, dataset.n_items, [m.dim for m in dataset.modalities],
                        [m.name for m in dataset.modalities])
    model.attach(dataset)
    with torch.no_grad():  # some generated rows, as after an epoch
        model.generate_missing()
    return model, dataset


def _batch(dataset, size: int = 40, seed: int = 0):
    train = dataset.interactions.train
    rows = np.random.default_rng(seed).choice(len(train), size, replace=False)
    sampler = NegativeSampler(train, dataset.n_items, np.random.default_rng(seed))
    users = train[rows, 0]
    return torch.as_tensor(users), torch.as_tensor(train[rows, 1]), torch.as_tensor(sampler.sample(users))


def test_csr_rows_and_column_block_match_dense() -> None:
    dense = torch.tensor([[0, 1.0, 0, 2], [3, 0, 0, 0], [0, 0, 0, 0], [4, 5, 6, 7]])
    graph = dense.to_sparse_csr()
    rows = torch.tensor([3, 0, 2])
    assert torch.equal(csr_rows(graph, rows).to_dense(), dense[rows])
    cols = torch.tensor([3, 1])
    assert torch.equal(column_block(csr_rows(graph, rows), cols).to_dense(), dense[rows][:, cols])


@pytest.mark.parametrize("cf_propagation, n_ui_layers", [("exact", 3), ("cached", 3), ("cached", 1), ("cached", 0)])
def test_local_parts_equal_the_full_parts_at_the_batch_rows(cf_propagation: str, n_ui_layers: int) -> None:
    model, dataset = _model(replace(FAST, cf_propagation=cf_propagation, n_ui_layers=n_ui_layers))
    model.train()
    users, pos, neg = _batch(dataset)
    batch = batch_local.LocalBatch.of(users, pos, neg)
    with torch.no_grad():
        full = model.forward_parts()
        cache = batch_local.fill_cache(model)
        local, _ = batch_local.local_parts(model, cache, batch)
    assert torch.equal(batch.users[batch.user_rows], users) and torch.equal(batch.items[batch.pos_rows], pos)
    for name in ("g", "s", "f", "gf", "sf"):
        for m in range(model.n_modalities):
            assert torch.allclose(getattr(local, name)[m], getattr(full, name)[m][batch.items], atol=1e-6), name
    for name in ("gu", "su"):
        for m in range(model.n_modalities):
            assert torch.allclose(getattr(local, name)[m], getattr(full, name)[m][batch.users], atol=1e-6), name
    assert torch.allclose(local.e_u, full.e_u[batch.users])
    assert torch.allclose(local.e_i, full.e_i[batch.items])


@pytest.mark.parametrize("gen_training", ["joint", "after"])  # 'after': the paper's generation terms
def test_batch_local_loss_equals_the_exact_loss_on_a_fresh_cache(gen_training: str) -> None:
    losses = {}
    for mode in ("paper-exact", "batch-local"):
        model, dataset = _model(replace(FAST, training_mode=mode, gen_training=gen_training))
        model.train()
        batch = _batch(dataset)
        torch.manual_seed(1)  # the same perturbation draws in both modes
        _, terms = model.loss(*batch)
        losses[mode] = terms
    exact, local = losses["paper-exact"], losses["batch-local"]
    assert set(exact) == set(local) and ("chain" in exact) == (gen_training == "joint")
    for key in exact:
        if key not in ("club", "recon"):  # these two average over the batch's items, not the catalog's
            assert abs(exact[key] - local[key]) <= 1e-4 * max(1.0, abs(exact[key])), key


def test_gradients_reach_only_the_batch_items_features_rows() -> None:
    model, dataset = _model(replace(FAST, training_mode="batch-local", train_features=True))
    model.train()
    users, pos, neg = _batch(dataset, size=10)
    loss, _ = model.loss(users, pos, neg)
    loss.backward()
    touched = torch.nonzero(model.features(0).grad.abs().sum(1) > 0).squeeze(1)
    assert len(touched) and set(touched.tolist()) <= set(torch.cat([pos, neg]).tolist())


@pytest.mark.parametrize("cf_propagation", ["exact", "cached"])
def test_item_id_gradients_stay_in_the_batch_with_cached_collaborative_layers(cf_propagation: str) -> None:
    model, dataset = _model(replace(FAST, training_mode="batch-local", cf_propagation=cf_propagation))
    model.train()
    users, pos, neg = _batch(dataset, size=10)
    loss, _ = model.loss(users, pos, neg)
    loss.backward()
    # item ID embeddings enter the loss only through the collaborative branch (user IDs also through the
    # preference filters, which read every user of the batch's items)
    touched = set(torch.nonzero(model.item_emb.weight.grad.abs().sum(1) > 0).squeeze(1).tolist())
    batch_items = set(torch.cat([pos, neg]).tolist())
    assert touched >= set(pos.tolist())
    if cf_propagation == "cached":  # the gradient stops at the cached layers of the other nodes
        assert touched <= batch_items
    else:  # whole-graph propagation: items beyond the batch get gradients too
        assert not touched <= batch_items


def test_the_cached_collaborative_layers_take_the_batch_nodes_fresh_rows() -> None:
    model, dataset = _model(replace(FAST, training_mode="batch-local", cf_propagation="cached"))
    model.train()
    users, pos, neg = _batch(dataset)
    model._cache = batch_local.fill_cache(model)
    stale = model._cache.cf[0].clone()
    with torch.no_grad():
        model.item_emb.weight.mul_(1.5)  # layer 0 moves after the cache was filled
        model.user_emb.weight.mul_(0.5)
    model.loss(users, pos, neg)
    nodes = batch_local.LocalBatch.of(users, pos, neg).nodes(model.n_users)
    with torch.no_grad():
        layer1 = model.product("norm_adj", model.id_embeddings())  # layer 1 reads only the live layer 0
    others = torch.ones(len(stale), dtype=torch.bool)
    others[nodes] = False
    assert torch.allclose(model._cache.cf[0][nodes], layer1[nodes], atol=1e-6)
    assert torch.equal(model._cache.cf[0][others], stale[others])
    assert not torch.allclose(stale[nodes], layer1[nodes])


def test_the_cache_takes_the_batch_rows_after_a_step() -> None:
    model, dataset = _model(replace(FAST, training_mode="batch-local"))
    model.train()
    users, pos, neg = _batch(dataset)
    with torch.no_grad():
        model.user_emb.weight.mul_(1.5)  # representations move: the cache filled before is now stale
    model._cache = None
    model.loss(users, pos, neg)  # fills the cache, then writes the batch's fresh rows into it
    items = torch.unique(torch.cat([pos, neg]))
    with torch.no_grad():
        full = model.forward_parts()
    assert torch.allclose(model._cache.g[0][-1][items], full.gf[0][items], atol=1e-6)


@pytest.mark.parametrize("cf_propagation", ["exact", "cached"])
def test_batch_local_training_learns(cf_propagation: str) -> None:
    dataset = make_toy_dataset()
    result = fit(dataset, replace(FAST, training_mode="batch-local", cf_propagation=cf_propagation, epochs=6,
                                  eval_every=2), progress=False)
    exact = fit(dataset, replace(FAST, epochs=6, eval_every=2), progress=False)
    assert result.best_epoch > 0
    assert result.test["recall@20"] >= 0.8 * exact.test["recall@20"] > 0


def test_auto_mode_is_batch_local_only_where_a_batch_cannot_touch_the_catalog() -> None:
    small, _ = _model(replace(FAST, training_mode="auto", batch_size=4096))
    large, _ = _model(replace(FAST, training_mode="auto", batch_size=8))
    assert not small.batch_local and large.batch_local and small.n_items > 16
