"""DGMRec model, graphs and trainer on toy data with a known answer."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import make_toy_dataset
from dgmrec_core.checkpoint import load_model
from dgmrec_core.config import DGMRecConfig
from dgmrec_core.errors import DataError
from dgmrec_core.graphs import chunked_cosine_knn, modality_knn_graph, refresh_rows
from dgmrec_core.model import DGMRec
from dgmrec_core.trainer import fit

FAST = DGMRecConfig(epochs=4, batch_size=128, patience=50, knn_k=5, refresh_every=2, seed=7)


def _model(dataset, config=FAST, *, take_features: bool = False) -> DGMRec:
    torch.manual_seed(config.seed)
    model = DGMRec(config, dataset.n_users, dataset.n_items, [m.dim for m in dataset.modalities],
                   [m.name for m in dataset.modalities])
    model.attach(dataset, take_features=take_features)
    return model


def test_chunked_knn_matches_brute_force() -> None:
    x = torch.randn(50, 7)
    idx, sims = chunked_cosine_knn(x, 4, max_chunk_bytes=4 * 50 * 3)  # 3 rows per chunk
    full = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(x, dim=1).T
    top = full.topk(4, dim=1)
    assert torch.allclose(sims, top.values, atol=1e-6)
    assert torch.equal(idx[:, 0], torch.arange(50))  # each row's nearest is itself


def test_missing_item_keeps_only_its_self_loop() -> None:
    x = torch.randn(30, 6)
    observed = torch.ones(30, dtype=torch.bool)
    observed[[3, 11, 20]] = False
    graph = modality_knn_graph(x, observed, 5)
    rows, cols = graph.indices()
    for item in (3, 11, 20):
        touching = (rows == item) | (cols == item)
        assert rows[touching].tolist() == [item] and cols[touching].tolist() == [item]
        assert graph.values()[touching].item() == pytest.approx(1.0)
    assert ((rows != cols) & observed[rows] & observed[cols]).sum() > 0


def paper_knn_graph(x: torch.Tensor, observed: torch.Tensor, k: int) -> torch.Tensor:
    """Reference of the paper's rule, dense: top-k cosine over all rows, edges touching missing rows cut,
    a self-loop of 1 for missing rows, then D^-1/2 A D^-1/2 with D the row sums."""
    sims = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(x, dim=1).T
    top = sims.topk(k, dim=1)
    adj = torch.zeros_like(sims).scatter_(1, top.indices, top.values.clamp(min=0))
    adj[~observed] = 0
    adj[:, ~observed] = 0
    adj[~observed, ~observed] = 1.0
    inv_sqrt = adj.sum(1).pow(-0.5)
    return inv_sqrt[:, None] * adj * inv_sqrt[None, :]


@pytest.mark.parametrize("n_missing", [2, 9, 25])
def test_knn_graph_with_identical_imputed_rows_equals_the_full_search(n_missing: int) -> None:
    torch.manual_seed(n_missing)
    x = torch.randn(40, 6)
    observed = torch.ones(40, dtype=torch.bool)
    observed[torch.randperm(40)[:n_missing]] = False
    x[~observed] = x[observed].mean(0)  # mean imputation: every missing row the same vector, near everything
    expected = paper_knn_graph(x, observed, 5)
    graph = modality_knn_graph(x, observed, 5).to_dense()
    torch.testing.assert_close(graph, expected)
    cut = ((expected > 0) & observed[:, None] & observed[None, :]).sum(1)
    assert (cut < 5).any()  # the imputed rows did take places from observed neighbours


def test_knn_graph_of_a_modality_nobody_has_is_self_loops() -> None:
    graph = modality_knn_graph(torch.zeros(6, 3), torch.zeros(6, dtype=torch.bool), 4).to_dense()
    torch.testing.assert_close(graph, torch.eye(6))


def test_refresh_blends_only_the_given_rows() -> None:
    n = 6
    old = torch.eye(n).to_sparse().coalesce()
    rebuilt = torch.full((n, n), 0.5).to_sparse().coalesce()
    new = refresh_rows(old, rebuilt, torch.tensor([1, 4]), 0.4).to_dense()
    assert torch.allclose(new[1], 0.4 * torch.full((n,), 0.5) + 0.6 * torch.eye(n)[1])
    assert torch.allclose(new[[0, 2, 3, 5]], torch.eye(n)[[0, 2, 3, 5]])


def test_generation_changes_only_missing_rows() -> None:
    dataset = make_toy_dataset()
    model = _model(dataset)
    before = [model.features(m).clone() for m in range(2)]
    model.generate_missing()
    for m in range(2):
        missing = ~model.observed[:, m]
        assert missing.any()
        assert torch.equal(model.features(m)[~missing], before[m][~missing])
        assert not torch.allclose(model.features(m)[missing], before[m][missing])
        # observed rows still hold the real features
        real = torch.as_tensor(dataset.modalities[m].values)
        assert torch.equal(model.features(m)[~missing], real[~missing])


def test_imputation_fills_missing_rows_with_observed_mean() -> None:
    dataset = make_toy_dataset()
    model = _model(dataset)
    values, observed = dataset.modalities[0].values, dataset.modalities[0].observed
    expected = torch.as_tensor(values[observed].mean(0))
    assert torch.allclose(model.features(0)[~torch.as_tensor(observed)], expected.expand(int((~observed).sum()), -1))


def test_training_learns_the_toy_answer_and_loss_decreases() -> None:
    dataset = make_toy_dataset()
    result = fit(dataset, replace(FAST, epochs=25, lr=1e-2), progress=False)
    losses = [sum(h["loss"].values()) for h in result.history]
    assert losses[-1] < losses[0]
    users, items = result.model.final_embeddings()
    scores = users @ items.T
    same_cluster = (torch.arange(dataset.n_users)[:, None] % 2) == (torch.arange(dataset.n_items)[None, :] % 2)
    top = scores.topk(10, dim=1).indices
    precision = same_cluster.gather(1, top).float().mean().item()
    assert precision > 0.9  # chance is 0.5
    assert result.test["recall@20"] > 0.5


def test_same_seed_same_result() -> None:
    dataset = make_toy_dataset()
    a = fit(dataset, FAST, progress=False)
    b = fit(dataset, FAST, progress=False)
    assert a.history[-1]["loss"] == b.history[-1]["loss"]
    assert a.test == b.test
    c = fit(dataset, replace(FAST, seed=8), progress=False)
    assert c.history[-1]["loss"] != a.history[-1]["loss"]


def test_checkpoint_round_trip_gives_same_scores(tmp_path) -> None:
    dataset = make_toy_dataset()
    result = fit(dataset, FAST, checkpoint=tmp_path / "model.pt", progress=False)
    loaded, payload = load_model(tmp_path / "model.pt")
    for a, b in zip(result.model.final_embeddings(), loaded.final_embeddings()):
        assert torch.allclose(a, b)
    assert payload["best_epoch"] == result.best_epoch


def test_resume_continues_like_an_uninterrupted_run(tmp_path) -> None:
    dataset = make_toy_dataset()
    full = fit(dataset, FAST, progress=False)
    fit(dataset, replace(FAST, epochs=2), checkpoint=tmp_path / "m.pt", progress=False)
    resumed = fit(dataset, FAST, checkpoint=tmp_path / "m.pt", resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[-1]["loss"] == pytest.approx(full.history[-1]["loss"], rel=1e-5)
    assert resumed.test == pytest.approx(full.test, rel=1e-5)


def test_resume_refuses_other_data(tmp_path) -> None:
    fit(make_toy_dataset(), replace(FAST, epochs=1), checkpoint=tmp_path / "m.pt", progress=False)
    with pytest.raises(DataError, match="different data"):
        fit(make_toy_dataset(seed=1), FAST, checkpoint=tmp_path / "m.pt", resume=True, progress=False)


def test_baselines_run_in_the_same_harness() -> None:
    dataset = make_toy_dataset()
    lightgcn = fit(dataset, replace(FAST, use_modalities=False), progress=False)
    assert not hasattr(lightgcn.model, "decoder") and lightgcn.test["recall@20"] > 0
    no_gen = fit(dataset, replace(FAST, generation=False), progress=False)
    assert no_gen.model.epochs_generated == 0
    missing = ~no_gen.model.observed[:, 0]
    assert torch.allclose(no_gen.model.features(0)[missing], no_gen.model.features(0)[missing][0].expand(int(missing.sum()), -1))


def test_three_modalities_are_supported() -> None:
    dataset = make_toy_dataset(dims=(12, 8, 6))
    result = fit(dataset, replace(FAST, epochs=2), progress=False)
    assert len(result.model.translator) == 6
    x = torch.randn(3, 12)
    assert result.model.query_to_modality(0, 2, x).shape == (3, 6)


def test_empty_training_split_is_refused() -> None:
    dataset = make_toy_dataset()
    dataset.interactions.train = np.zeros((0, 2), dtype=np.int64)
    with pytest.raises(DataError, match="training split is empty"):
        fit(dataset, FAST, progress=False)


def test_observed_only_knn_gives_observed_items_k_neighbours() -> None:
    x = torch.randn(40, 6)
    observed = torch.ones(40, dtype=torch.bool)
    observed[::3] = False
    graph = modality_knn_graph(x, observed, 4, observed_only=True)
    rows, cols = graph.indices()
    counts = torch.bincount(rows, minlength=40)
    assert torch.all(counts[observed] == 4) and torch.all(counts[~observed] == 1)
    assert torch.all(observed[cols[observed[rows]]])


def test_sampled_anchors_reach_only_the_info_nce_terms_and_still_learn_the_toy() -> None:
    """nce_anchors samples the InfoNCE terms of a batch (here 'intra' differs from the full batch's) and
    nothing else ('bpr' is the same batch's); trained with it, the toy answer is still learned."""
    dataset = make_toy_dataset()
    inter = dataset.interactions
    users, pos = (torch.as_tensor(inter.train[:, k]) for k in (0, 1))
    neg = (pos + 1) % dataset.n_items
    terms = {}
    for anchors in (0, 4):
        model = _model(dataset, replace(FAST, nce_anchors=anchors))
        model.train()
        torch.manual_seed(3)
        terms[anchors] = model.loss(users, pos, neg)[1]
    assert terms[4]["bpr"] == terms[0]["bpr"]
    assert terms[4]["intra"] != terms[0]["intra"]
    result = fit(dataset, replace(FAST, epochs=25, lr=1e-2, nce_anchors=4), progress=False)
    assert result.test["recall@20"] > 0.5


def test_negative_anchor_count_is_refused_by_name() -> None:
    with pytest.raises(DataError, match="nce_anchors"):
        DGMRecConfig(nce_anchors=-1)
