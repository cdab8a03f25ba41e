"""The stopping rule shared by every model, on synthetic validation curves."""
from __future__ import annotations

from dataclasses import replace

import pytest

from conftest import make_toy_dataset
from dgmrec_core import trainer
from dgmrec_core.config import DGMRecConfig
from dgmrec_core.trainer import fit

LIGHTGCN = replace(DGMRecConfig(), use_modalities=False, batch_size=512, embedding_size=8, seed=3)


def dip_curve(epoch: int) -> float:
    """LightGCN's shape on ML-100K: an early peak (epoch 24), a dip until epoch 52, a long rise to 150."""
    if epoch <= 24:
        return 0.005 * epoch
    if epoch <= 52:
        return 0.12 - 0.001 * (epoch - 24)
    return 0.092 + 0.002 * (min(epoch, 150) - 52) - 0.0001 * max(0, epoch - 150)


def scripted_validation(monkeypatch: pytest.MonkeyPatch, eval_every: int) -> None:
    """Replace the evaluator: the k-th validation during training returns dip_curve(k * eval_every)."""
    calls = {"valid": 0}

    def fake(model, dataset, split, *, new_items_only=False):
        if split == "valid":
            calls["valid"] += 1
        return {"recall@20": dip_curve(calls["valid"] * eval_every), "ndcg@20": 0.0}

    monkeypatch.setattr(trainer, "evaluate", fake)


def test_defaults_are_the_reference_rule() -> None:
    config = DGMRecConfig()
    assert (config.eval_every, config.patience, config.epochs) == (3, 26, 500)


def test_default_rule_goes_on_through_a_dip(monkeypatch) -> None:
    scripted_validation(monkeypatch, LIGHTGCN.eval_every)
    result = fit(make_toy_dataset(), LIGHTGCN, progress=False)
    assert result.best_epoch == 150
    assert len(result.history) == 150 + 26 * 3  # stops after 26 validations without improvement
    curve = [(h["epoch"], h["valid"]["recall@20"]) for h in result.history if "valid" in h]
    assert curve[0] == (3, pytest.approx(0.015)) and len(curve) == len(result.history) // 3


def test_old_rule_stopped_inside_the_dip(monkeypatch) -> None:
    old = replace(LIGHTGCN, eval_every=1, patience=20, epochs=300)
    scripted_validation(monkeypatch, 1)
    result = fit(make_toy_dataset(), old, progress=False)
    assert result.best_epoch == 24 and len(result.history) == 44


def test_last_epoch_is_validated() -> None:
    result = fit(make_toy_dataset(), replace(LIGHTGCN, epochs=4), progress=False)
    assert [h["epoch"] for h in result.history if "valid" in h] == [3, 4]
