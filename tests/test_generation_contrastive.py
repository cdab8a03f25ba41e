"""The contrastive generator (default) against the paper's, on data where the answer is known.

Image features are a fixed linear map of text features plus noise, so a working generator must rank an
item's own real image first or near it from its text alone; mean imputation cannot.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from dgmrec_core.config import DGMRecConfig
from dgmrec_core.data import Dataset, Modality
from dgmrec_core.errors import DataError
from dgmrec_core.generation_eval import hit_at_k, ranks_of_real
from dgmrec_core.heldout import auto_route, heldout_report
from dgmrec_core.imputation import direct_imputation, mean_imputation, ridge_imputation
from dgmrec_core.interactions import build_interactions
from dgmrec_core.trainer import fit

N_ITEMS, N_USERS, D_TEXT, D_IMAGE = 240, 60, 24, 32
CONFIG = DGMRecConfig(epochs=30, batch_size=256, patience=100, knn_k=5, refresh_every=5, seed=3, additive=1.0,
                      embedding_size=32)


def linear_dataset(seed: int = 0) -> tuple[Dataset, np.ndarray]:
    """Items with text t_i ~ N(0, I) and image W t_i + small noise; a third of the items miss their image
    in training (their real image is returned beside the dataset), users like one of four item groups."""
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(N_ITEMS, D_TEXT)).astype(np.float32)
    image = (text @ rng.normal(size=(D_TEXT, D_IMAGE)) + 0.1 * rng.normal(size=(N_ITEMS, D_IMAGE))).astype(np.float32)
    group = np.argmax(text[:, :4], axis=1)
    users, items = [], []
    for u in range(N_USERS):
        liked = rng.choice(np.flatnonzero(group == u % 4), size=15, replace=False)
        users += [f"u{u}"] * len(liked)
        items += [str(i) for i in liked]
    inter = build_interactions(np.array(users), np.array(items), seed=seed, item_ids=[str(i) for i in range(N_ITEMS)])
    hidden = np.zeros(N_ITEMS, dtype=bool)
    hidden[rng.permutation(N_ITEMS)[:N_ITEMS // 3]] = True
    observed_image = ~hidden
    values = np.where(observed_image[:, None], image, 0).astype(np.float32)
    modalities = [Modality("image", values, observed_image), Modality("text", text, np.ones(N_ITEMS, dtype=bool))]
    return Dataset(inter, modalities, name="linear"), image


@pytest.fixture(scope="module")
def trained() -> dict:
    dataset, image = linear_dataset()
    return {"dataset": dataset, "image": image,
            "contrastive": fit(dataset, CONFIG, progress=False).model,
            "paper": fit(dataset, replace(CONFIG, generator="paper"), progress=False).model}


def _hidden_ranks(model, dataset: Dataset, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hidden = np.flatnonzero(~dataset.modalities[0].observed)
    with torch.no_grad():
        generated = model.generated_features(noise=False)[0].numpy()[hidden]
    return ranks_of_real(generated, image, hidden), generated


def test_contrastive_generation_finds_the_item_and_is_not_collapsed(trained) -> None:
    ranks, generated = _hidden_ranks(trained["contrastive"], trained["dataset"], trained["image"])
    assert hit_at_k(ranks, (10,))["hit@10"] > 0.5  # chance: 10 / 240
    unit = generated / np.linalg.norm(generated, axis=1, keepdims=True)
    sims = unit @ unit.T
    assert (sims.sum() - len(sims)) / (len(sims) * (len(sims) - 1)) < 0.5  # rows are not all alike


def test_contrastive_generation_beats_mean_imputation_and_the_paper_generator(trained) -> None:
    dataset, image = trained["dataset"], trained["image"]
    mine, _ = _hidden_ranks(trained["contrastive"], dataset, image)
    paper, _ = _hidden_ranks(trained["paper"], dataset, image)
    hidden = np.flatnonzero(~dataset.modalities[0].observed)
    mean = mean_imputation(len(hidden), image[dataset.modalities[0].observed])
    mean_ranks = ranks_of_real(mean, image, hidden)
    assert np.median(mine) < np.median(mean_ranks) and np.median(mine) < np.median(paper)


def test_calibration_matches_the_real_spread(trained) -> None:
    model, dataset = trained["contrastive"], trained["dataset"]
    _, generated = _hidden_ranks(model, dataset, trained["image"])
    real = trained["image"][dataset.modalities[0].observed]
    ratio = generated.std(0) / real.std(0)
    assert 0.5 < ratio.mean() < 1.5
    assert np.abs(generated.mean(0) - real.mean(0)).mean() < 0.5 * real.std(0).mean()


def test_paper_generator_is_deterministic_for_a_seed() -> None:
    dataset, _ = linear_dataset(seed=1)
    config = replace(CONFIG, generator="paper", epochs=3)
    runs = [fit(dataset, config, progress=False).model.generated_features(noise=False)[0] for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def test_unknown_generator_is_refused() -> None:
    with pytest.raises(DataError, match="generator"):
        DGMRecConfig(generator="magic")


def test_heldout_report_scores_routes_and_generation(trained) -> None:
    model, dataset, image = trained["contrastive"], trained["dataset"], trained["image"]
    text = dataset.modalities[1].values
    report = heldout_report(model, [image, text], [np.ones(N_ITEMS, dtype=bool)] * 2)
    pair = {(p["src"], p["dst"]): p for p in report["pairs"]}[("text", "image")]
    assert pair["n"] == N_ITEMS // 3
    assert set(pair["generation"]) == {"dgmrec", "nn", "ridge", "mean"}  # no direct: sizes differ
    assert set(pair["routes"]) == {"dgmrec"} and pair["auto"] == "dgmrec"
    assert pair["generation"]["dgmrec"]["hit@10"] > pair["generation"]["mean"]["hit@10"]


def test_auto_route_takes_the_best_hit_rate() -> None:
    routes = {"dgmrec": {"hit@10": 0.2, "median_rank": 40.0}, "direct": {"hit@10": 0.3, "median_rank": 50.0},
              "fused": {"hit@10": 0.3, "median_rank": 30.0}}
    assert auto_route(routes) == "fused"
    routes["dgmrec"]["hit@10"] = 0.3
    routes["dgmrec"]["median_rank"] = 30.0
    assert auto_route(routes) == "dgmrec"  # exact tie: DGMRec's own route


def test_simple_references() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 6))
    b = a @ rng.normal(size=(6, 5)) + 3.0
    pred = ridge_imputation(a[:5], a, b)
    assert np.allclose(pred, b[:5], atol=0.05)
    assert direct_imputation(a, 5) is None and direct_imputation(a, 6).shape == (200, 6)
    assert np.allclose(mean_imputation(3, b), b.mean(0))


@pytest.mark.parametrize("generator", ["contrastive", "paper"])
def test_a_single_modality_trains_and_generates(generator: str) -> None:
    dataset, _ = linear_dataset(seed=2)
    single = replace(dataset, modalities=dataset.modalities[:1])
    model = fit(single, replace(CONFIG, generator=generator, epochs=2), progress=False).model
    (generated,) = model.generated_features(noise=False)
    assert generated.shape == (N_ITEMS, D_IMAGE) and torch.isfinite(generated).all()


def test_paper_generator_reproduces_the_outputs_of_the_code_before_the_new_default() -> None:
    """--generator paper gives, to float rounding, what the code gave before the contrastive generator
    existed (values pinned from commit 77cee5e with this toy run, one thread and float32 feature rows)."""
    from conftest import make_toy_dataset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset = make_toy_dataset(n_users=30, n_items=40, dims=(12, 8), seed=5)
        config = DGMRecConfig(generator="paper", eval_every=1, epochs=3, batch_size=64, patience=50, knn_k=4,
                              refresh_every=2, seed=11, embedding_size=16, feature_precision="float32")
        result = fit(dataset, config, progress=False)
    finally:
        torch.set_num_threads(threads)
    image, text = result.model.generated_features(noise=False)
    np.testing.assert_allclose(image[:2, :3].flatten().numpy(),
                               [-0.428101, -0.06794, 0.044596, -0.456404, 0.090272, -0.035922], atol=2e-5)
    np.testing.assert_allclose(text[:2, :3].flatten().numpy(),
                               [-0.440898, -0.658153, 0.036243, -0.312454, -0.718578, 0.325654], atol=2e-5)
    assert result.history[-1]["loss"]["bpr"] == pytest.approx(0.680547, abs=2e-5)


@pytest.mark.parametrize("scope", ["all", "generator"])
def test_chain_scope_decides_what_the_chain_loss_trains(scope: str) -> None:
    """gen_chain_scope 'generator': the training-time chain loss reaches only the generator's parts
    (translators, specific generators, decoders), never the general encoders or the users' preference;
    'all' (the default) reaches the encoders and the user embeddings too."""
    from test_model import _model

    dataset, _ = linear_dataset()
    model = _model(dataset, replace(CONFIG, gen_chain_scope=scope))
    train = torch.as_tensor(dataset.interactions.train, dtype=torch.long)[:128]
    users, pos = train[:, 0], train[:, 1]
    neg = torch.randint(0, dataset.n_items, pos.shape, generator=torch.Generator().manual_seed(0))
    terms = model._modality_terms(model.forward_parts(), users, pos, neg, None, None)
    assert float(terms["chain"].detach()) > 0
    terms["chain"].backward()

    def grad_norm(module: torch.nn.Module) -> float:
        return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)

    for generator_part in (model.translator, model.gen_specific, model.decoder):
        assert grad_norm(generator_part) > 0
    reached = [grad_norm(m) for m in (model.enc_general, model.shared, model.preference, model.user_emb)]
    if scope == "generator":
        assert reached == [0.0, 0.0, 0.0, 0.0]
    else:
        assert all(r > 0 for r in reached), reached
