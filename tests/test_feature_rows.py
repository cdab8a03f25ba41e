"""The feature rows training batches read (dgmrec_core.feature_rows): squared norms made once per version of
the rows, and the bfloat16 rows of ``config.feature_precision``."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from conftest import make_toy_dataset
from dgmrec_core.config import DGMRecConfig
from dgmrec_core.errors import DataError
from dgmrec_core.feature_rows import FeatureRows, bf16_pays, bf16_rows, precision_name
from dgmrec_core.model import DGMRec
from dgmrec_core.trainer import fit

FAST = DGMRecConfig(epochs=4, batch_size=128, patience=50, knn_k=5, refresh_every=2, seed=7)


def _model(dataset, config: DGMRecConfig) -> DGMRec:
    torch.manual_seed(config.seed)
    model = DGMRec(config, dataset.n_users, dataset.n_items, [m.dim for m in dataset.modalities],
                   [m.name for m in dataset.modalities])
    model.attach(dataset)
    return model


def test_norms_follow_every_write_into_the_rows() -> None:
    x = torch.randn(50, 7)
    rows = FeatureRows()
    items = torch.tensor([4, 0, 31])
    assert torch.equal(rows.squared_norms(0, x, items), (x * x).sum(1)[items])
    x[0:10][torch.arange(10) == 4] = 3.0  # a write through a view, as generation writes its rows
    assert rows.squared_norms(0, x, items)[0].item() == pytest.approx(9.0 * 7)
    y = torch.randn(50, 7)  # another tensor in the rows' place
    assert torch.equal(rows.squared_norms(0, y, items), (y * y).sum(1)[items])
    assert torch.equal(rows.squared_norms(1, x, items), (x * x).sum(1)[items])  # each modality its own
    rows.clear()
    assert rows.squared_norms(0, torch.zeros(0, 7), torch.zeros(0, dtype=torch.long)).shape == (0,)
    assert torch.equal(bf16_rows(x, items), x[items].to(torch.bfloat16))
    assert torch.equal(bf16_rows(x), x.to(torch.bfloat16))


@pytest.mark.parametrize("mode", ["paper-exact", "batch-local"])
def test_squared_norms_read_once_leave_the_loss_as_it_was(mode: str, monkeypatch) -> None:
    """The loss with the norms read from the per-version copy equals the loss with the norms computed from the
    batch's own rows, as before the copy (so the batch-local batch's rows map to the right items' norms)."""
    dataset = make_toy_dataset()
    inter = dataset.interactions
    users, pos = (torch.as_tensor(inter.train[:30, k]) for k in (0, 1))  # a batch of some of the items
    neg = (pos + 3) % dataset.n_items
    assert len(torch.unique(torch.cat([pos, neg]))) < dataset.n_items
    config = replace(FAST, training_mode=mode, feature_precision="float32")  # norms of float32 rows
    terms = []
    for precomputed in (True, False):
        model = _model(dataset, config)
        if not precomputed:
            monkeypatch.setattr(model._rows, "squared_norms", lambda m, x, items: None)  # from the rows
        model.train()
        torch.manual_seed(3)
        terms.append(model.loss(users, pos, neg)[1])
    assert terms[0].keys() == terms[1].keys()
    for key in terms[0]:
        assert terms[0][key] == pytest.approx(terms[1][key], rel=1e-5, abs=1e-7), key


def _loss_and_grads(model: DGMRec, batch) -> tuple[dict, dict]:
    model.train()
    torch.manual_seed(3)
    total, terms = model.loss(*batch)
    model.zero_grad()
    total.backward()
    return terms, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["paper-exact", "batch-local"])
def test_bfloat16_rows_change_the_wide_products_only(mode: str) -> None:
    """With feature_precision 'bfloat16' the same weights give the same loss terms and gradients up to bfloat16
    rounding, the products with the rows are made in bfloat16, and what is scored outside training stays float32."""
    dataset = make_toy_dataset()
    inter = dataset.interactions
    batch = (torch.as_tensor(inter.train[:, 0]), torch.as_tensor(inter.train[:, 1]),
             (torch.as_tensor(inter.train[:, 1]) + 3) % dataset.n_items)
    exact = _model(dataset, replace(FAST, training_mode=mode, feature_precision="float32"))
    low = _model(dataset, replace(FAST, training_mode=mode, feature_precision="bfloat16"))
    low.load_state_dict(exact.state_dict())
    terms, grads = _loss_and_grads(exact, batch)
    low_terms, low_grads = _loss_and_grads(low, batch)
    assert low.training_rows(0).dtype == torch.bfloat16 and exact.training_rows(0).dtype == torch.float32
    assert any(low_terms[k] != terms[k] for k in terms)  # the rows were read in bfloat16
    for key in terms:
        assert low_terms[key] == pytest.approx(terms[key], rel=2e-2, abs=1e-3), key
    for name, grad in grads.items():
        if grad.norm() > 1e-6:
            cosine = torch.nn.functional.cosine_similarity(grad.flatten(), low_grads[name].flatten(), dim=0)
            assert cosine > 0.98, name
    exact.eval()
    low.eval()
    assert low.training_rows(0).dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(exact.forward_parts().gf[0], low.forward_parts().gf[0])


def test_bfloat16_rows_still_learn_the_toy_and_the_norms_are_let_go() -> None:
    result = fit(make_toy_dataset(), replace(FAST, epochs=25, lr=1e-2, feature_precision="bfloat16"), progress=False)
    assert result.test["recall@20"] > 0.5
    assert not result.model._rows._norms  # finish_training let them go


def test_bfloat16_rows_refuse_trained_rows_by_name() -> None:
    with pytest.raises(DataError, match="feature_precision.*train_features"):
        DGMRecConfig(feature_precision="bfloat16", train_features=True)
    with pytest.raises(DataError, match="feature_precision"):
        DGMRecConfig(feature_precision="half")
    model = _model(make_toy_dataset(), replace(FAST, train_features=True))  # 'auto' keeps trained rows float32
    model.train()
    assert model.training_rows(0).dtype == torch.float32


def test_auto_precision_follows_the_hardware(monkeypatch) -> None:
    """'auto' reads bfloat16 rows only on a CPU whose torch reports bfloat16 units; the named values always."""
    cpu = torch.device("cpu")
    for has_units in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: has_units)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert bf16_pays("auto", cpu) is has_units
        assert bf16_pays("bfloat16", cpu) and not bf16_pays("float32", cpu)
        assert precision_name("auto", cpu) == ("bfloat16" if has_units else "float32")
    assert not bf16_pays("auto", torch.device("meta"))  # not a CPU: not measured there, float32
