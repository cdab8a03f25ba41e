"""The stopping rule shared by every model (synthetic validation curves) and its fallback for splits too
sparse to validate on."""
from __future__ import annotations

import json
import math
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_toy_dataset
from dgmrec_core import trainer
from dgmrec_core.checkpoint import load_model
from dgmrec_core.config import DGMRecConfig
from dgmrec_core.stopping import rise_in_sigmas, should_stop, trend_windows
from dgmrec_core.trainer import SparseValidationWarning, fit

LIGHTGCN = replace(DGMRecConfig(), use_modalities=False, batch_size=512, embedding_size=8, seed=3)


def dip_curve(epoch: int) -> float:
    """LightGCN's shape on ML-100K: an early peak (epoch 24), a dip until epoch 52, a long rise to 150."""
    if epoch <= 24:
        return 0.005 * epoch
    if epoch <= 52:
        return 0.12 - 0.001 * (epoch - 24)
    return 0.092 + 0.002 * (min(epoch, 150) - 52) - 0.0001 * max(0, epoch - 150)


def climb_back_curve(epoch: int) -> float:
    """The sample shop's shape (the paper's method, seed 0): a peak at the first validation, a drop, then a climb
    that passes the early peak only after more than 26 validations, a peak at epoch 200 and a slow decline."""
    wiggle = 0.001 * math.sin(1.7 * epoch)
    if epoch <= 3:
        return 0.340
    if epoch <= 200:
        return 0.309 + 0.0003 * (epoch - 9) + wiggle
    return 0.309 + 0.0003 * 191 - 0.0001 * (epoch - 200) + wiggle


def scripted_validation(monkeypatch: pytest.MonkeyPatch, eval_every: int, curve=dip_curve, done: int = 0) -> None:
    """Replace the evaluator: the k-th validation during training returns curve(k * eval_every) (k counted
    from ``done``, the validations a resumed run already had)."""
    calls = {"valid": done}

    def fake(model, dataset, split, *, new_items_only=False):
        if split == "valid":
            calls["valid"] += 1
        return {"recall@20": curve(calls["valid"] * eval_every), "ndcg@20": 0.0}

    monkeypatch.setattr(trainer, "evaluate", fake)


def test_defaults_are_the_reference_rule_with_the_trend_test() -> None:
    config = DGMRecConfig()
    assert (config.eval_every, config.patience, config.epochs, config.stop_rising_sigmas) == (3, 26, 500, 3.0)


def test_rise_in_sigmas_separates_a_climb_from_noise() -> None:
    rng = np.random.default_rng(0)
    noise = [0.34 + 0.003 * rng.standard_normal(26) for _ in range(200)]
    assert max(abs(rise_in_sigmas(n)) for n in noise) < 4.5  # flat curves: |t| beyond 3 in about 1 of 200
    assert np.mean([rise_in_sigmas(n) > 3 for n in noise]) < 0.02
    climb = 0.31 + 0.0009 * np.arange(26) + 0.003 * rng.standard_normal(26)  # the shop's climb, same scatter
    assert rise_in_sigmas(climb) > 5
    assert rise_in_sigmas(climb[::-1]) < -5
    assert rise_in_sigmas([0.1, 0.2]) == 0.0 and rise_in_sigmas([0.2, 0.2, 0.2]) == 0.0
    assert rise_in_sigmas([0.1, 0.2, 0.3]) == math.inf


def test_should_stop_needs_patience_and_no_climb() -> None:
    climb = list(0.3 + 0.001 * np.arange(10))
    assert not should_stop(9, 10, climb, 3.0)  # patience not spent
    assert not should_stop(10, 10, climb, 3.0)  # spent, but still climbing
    assert should_stop(10, 10, climb, 0.0)  # the reference rule alone
    assert should_stop(10, 10, climb[::-1], 3.0)
    assert not should_stop(10, 10, [0.5] * 30 + climb, 3.0)  # only the last `patience` scores count


def test_a_dip_that_turned_within_the_patience_counts_as_climbing() -> None:
    """The sparse shop's shape: a peak, a fall for half the patience, then a climb: the whole window's slope is
    flat, its second half's is steep."""
    v_shape = list(0.18 - 0.002 * np.arange(13)) + list(0.154 + 0.002 * np.arange(1, 14))
    v_shape = [v + 0.0005 * math.sin(3.1 * i) for i, v in enumerate(v_shape)]
    assert abs(rise_in_sigmas(v_shape)) < 3 < rise_in_sigmas(v_shape[13:])
    assert trend_windows(26) == (13, 26)
    assert not should_stop(26, 26, v_shape, 3.0)
    assert should_stop(26, 26, v_shape, 3.0, windows=[26])  # the trend test's first version (2004a63)


def test_reference_rule_stops_inside_the_shop_climb(monkeypatch) -> None:
    scripted_validation(monkeypatch, 3, climb_back_curve)
    result = fit(make_toy_dataset(), replace(LIGHTGCN, stop_rising_sigmas=0.0), progress=False)
    assert result.best_epoch == 3 and len(result.history) == 3 + 26 * 3


def test_default_rule_goes_on_through_the_shop_climb(monkeypatch) -> None:
    scripted_validation(monkeypatch, 3, climb_back_curve)
    result = fit(make_toy_dataset(), LIGHTGCN, progress=False)
    assert 190 <= result.best_epoch <= 210  # the true peak, not the first validation
    assert result.best_epoch + 26 * 3 <= len(result.history) < 500  # stopped by the decline, not the cap


def test_a_run_stopped_by_the_reference_rule_resumes_under_the_trend_test(monkeypatch, tmp_path) -> None:
    """stop_rising_sigmas may change on resume (it sets when a run stops, not how it trains): the reference
    rule's stopped run, resumed with the default, ends as an uninterrupted default run."""
    scripted_validation(monkeypatch, 3, climb_back_curve)
    first = fit(make_toy_dataset(), replace(LIGHTGCN, stop_rising_sigmas=0.0), progress=False,
                checkpoint=tmp_path / "m.pt")
    scripted_validation(monkeypatch, 3, climb_back_curve, done=len(first.history) // 3)
    resumed = fit(make_toy_dataset(), LIGHTGCN, progress=False, checkpoint=tmp_path / "m.pt", resume=True)
    scripted_validation(monkeypatch, 3, climb_back_curve)
    whole = fit(make_toy_dataset(), LIGHTGCN, progress=False)
    assert len(first.history) == 81
    assert (resumed.best_epoch, len(resumed.history)) == (whole.best_epoch, len(whole.history))
    assert resumed.test == pytest.approx(whole.test)


def test_default_rule_goes_on_through_a_dip(monkeypatch) -> None:
    scripted_validation(monkeypatch, LIGHTGCN.eval_every)
    result = fit(make_toy_dataset(), LIGHTGCN, progress=False)
    assert result.best_epoch == 150
    assert len(result.history) == 150 + 26 * 3  # stops after 26 validations without improvement
    curve = [(h["epoch"], h["valid"]["recall@20"]) for h in result.history if "valid" in h]
    assert curve[0] == (3, pytest.approx(0.015)) and len(curve) == len(result.history) // 3


def test_old_rule_stopped_inside_the_dip(monkeypatch) -> None:
    old = replace(LIGHTGCN, eval_every=1, patience=20, epochs=300)  # a falling curve: the trend test agrees
    scripted_validation(monkeypatch, 1)
    result = fit(make_toy_dataset(), old, progress=False)
    assert result.best_epoch == 24 and len(result.history) == 44


def test_a_resumed_run_that_had_stopped_trains_no_further(monkeypatch, tmp_path) -> None:
    """Resuming the checkpoint of a run the rule stopped gives that run's result: no extra epoch, the
    same best epoch (benchmarks/recommend.py --checkpoints resumes every run it is given again)."""
    old = replace(LIGHTGCN, eval_every=1, patience=20, epochs=300)
    scripted_validation(monkeypatch, 1)
    first = fit(make_toy_dataset(), old, progress=False, checkpoint=tmp_path / "m.pt")
    scripted_validation(monkeypatch, 1)
    again = fit(make_toy_dataset(), old, progress=False, checkpoint=tmp_path / "m.pt", resume=True)
    assert len(first.history) == len(again.history) == 44 and again.best_epoch == first.best_epoch == 24


def test_without_a_progress_bar_every_validation_is_logged(monkeypatch, caplog) -> None:
    scripted_validation(monkeypatch, 1)
    with caplog.at_level("INFO", logger="dgmrec.train"):
        result = fit(make_toy_dataset(), replace(LIGHTGCN, eval_every=1, patience=20, epochs=30), progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "dgmrec.train"]
    assert len(lines) == len(result.history) == 30
    assert lines[23] == ("epoch 24: valid recall@20 0.1200 (best 0.1200 at epoch 24, 0 of 20 validations without a "
                         "better one)")
    assert lines[29].startswith("epoch 30: valid recall@20 0.1140 (best 0.1200 at epoch 24, 6 of 20")


def test_last_epoch_is_validated() -> None:
    result = fit(make_toy_dataset(), replace(LIGHTGCN, epochs=4), progress=False)
    assert [h["epoch"] for h in result.history if "valid" in h] == [3, 4]


def single_interaction_dataset(n_users: int = 60, n_items: int = 30, n_regular: int = 0):
    """Every user has one interaction (so validation is empty), except ``n_regular`` users with ten."""
    from dgmrec_core.data import Dataset, Modality
    from dgmrec_core.interactions import build_interactions

    rng = np.random.default_rng(0)
    users = [str(u) for u in range(n_users)] + [f"r{u}" for u in range(n_regular) for _ in range(10)]
    items = [str(i) for i in rng.integers(0, n_items, n_users)] + \
            [str(i) for _ in range(n_regular) for i in rng.permutation(n_items)[:10]]
    inter = build_interactions(np.array(users), np.array(items), item_ids=[str(i) for i in range(n_items)])
    observed = rng.random((n_items, 2)) > 0.3
    modalities = [Modality(name, rng.normal(size=(n_items, d)).astype(np.float32), observed[:, m].copy())
                  for m, (name, d) in enumerate((("image", 8), ("text", 4)))]
    return Dataset(inter, modalities, name="single")


def test_empty_validation_warns_once_and_trains_a_fixed_number_of_epochs(tmp_path) -> None:
    dataset = single_interaction_dataset()
    assert len(dataset.interactions.valid) == 0
    config = replace(DGMRecConfig(), epochs=5, batch_size=64, knn_k=3, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit(dataset, config, checkpoint=tmp_path / "model.pt", progress=True)
    sparse = [w for w in caught if issubclass(w.category, SparseValidationWarning)]
    assert len(sparse) == 1 and "validation split is empty" in str(sparse[0].message)
    assert "5 epochs" in str(sparse[0].message)
    assert result.best_epoch == len(result.history) == 5
    assert result.valid == {} and not any("valid" in h for h in result.history)
    assert result.validation_problem == "the validation split is empty"
    loaded, payload = load_model(tmp_path / "model.pt")
    assert payload["best_epoch"] == 5
    for a, b in zip(result.model.final_embeddings(), loaded.final_embeddings()):
        assert torch.allclose(a, b)  # the saved model is the last one


def test_most_users_without_validation_fall_back_but_keep_the_curve() -> None:
    dataset = single_interaction_dataset(n_regular=5)
    assert len(dataset.interactions.valid) > 0
    with pytest.warns(SparseValidationWarning, match="only 7.7% of the 65 training users"):
        result = fit(dataset, replace(LIGHTGCN, epochs=7), progress=False)
    assert result.best_epoch == len(result.history) == 7
    assert [h["epoch"] for h in result.history if "valid" in h] == [3, 6, 7]
    assert all(np.isfinite(h["valid"]["recall@20"]) for h in result.history if "valid" in h)


def test_enough_validation_gives_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", SparseValidationWarning)
        fit(make_toy_dataset(), replace(LIGHTGCN, epochs=1), progress=False)


def test_cli_train_on_single_interactions_saves_a_model(tmp_path, capsys) -> None:
    from ui.cli import main

    dataset = single_interaction_dataset()
    pairs = dataset.interactions.train
    lines = ["user_id,item_id"] + [f"u{u},{i}" for u, i in pairs]
    (tmp_path / "inter.csv").write_text("\n".join(lines) + "\n")
    seen = np.unique(pairs[:, 1])  # the CLI's items: those of the file, in sorted id order
    for m in dataset.modalities:
        np.save(tmp_path / f"{m.name}.npy", m.values[seen])
    with pytest.warns(SparseValidationWarning):
        assert main(["train", "--interactions", str(tmp_path / "inter.csv"),
                     "--feature", f"image={tmp_path / 'image.npy'}", "--feature", f"text={tmp_path / 'text.npy'}",
                     "--epochs", "4", "--batch-size", "64", "--knn-k", "3", "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["best_epoch"] == 4 and metrics["validation_problem"] == "the validation split is empty"
    assert (tmp_path / "run" / "model.pt").exists()
    printed = capsys.readouterr()
    assert "epoch 4: loss" in printed.out + printed.err and "valid recall@20" not in printed.out + printed.err


def test_a_checkpoint_older_than_an_option_resumes_with_its_default() -> None:
    from dgmrec_core.trainer import config_changes

    saved = DGMRecConfig().to_dict()
    del saved["training_mode"]  # written before the option existed
    assert config_changes(saved, DGMRecConfig()) == ""
    assert "training_mode" in config_changes(saved, replace(DGMRecConfig(), training_mode="batch-local"))


def test_replaying_recorded_curves_finds_the_runs_the_trend_test_changes() -> None:
    """benchmarks/stopping_rule.py: a reference-rule run stopped inside the shop's climb must be run again; one
    stopped on a falling curve keeps its record; a default-rule run is reproduced by its own rule."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import stopping_rule

    config = DGMRecConfig()

    def record(curve_fn, last: int, sigmas: float | None) -> dict:
        r = {"dataset": "d", "setting": "full", "model": "m", "seed": 0, "epochs_run": last,
             "curve": [[e, curve_fn(e)] for e in range(3, last + 1, 3)]}
        return r if sigmas is None else {**r, "stop_rising_sigmas": sigmas, "stop_trend_windows": [13, 26]}

    climbed = stopping_rule.replay(record(climb_back_curve, 81, None), config)
    assert (climbed.reference_stop, climbed.default_stop, climbed.verdict) == (81, None, "goes on: run again")
    assert climbed.reproduced and climbed.rise_at_reference_stop > 3
    falling = stopping_rule.replay(record(lambda e: 0.3 - 0.001 * e + 0.0005 * math.sin(e), 81, None), config)
    assert (falling.reference_stop, falling.default_stop, falling.verdict) == (81, 81, "same")
    went_on = stopping_rule.replay(record(climb_back_curve, 279, 3.0), config)
    assert went_on.reproduced and went_on.verdict == "went on" and went_on.default_stop == 279
    assert not stopping_rule.replay(record(climb_back_curve, 120, None), config).reproduced


def test_records_of_runs_stopped_early_are_added_to_never_pruned(tmp_path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import stopping_rule

    def rec(seed: int, recall: float) -> dict:
        return {"dataset": "d", "setting": "full", "model": "m", "seed": seed, "recall@20": recall,
                "epochs_run": 81, "best_epoch": 3, "curve": [[3, 0.3], [6, 0.29]]}

    path = tmp_path / "early.json"
    stopping_rule.keep_reference_records([rec(0, 0.1), rec(1, 0.2)], path)
    kept = stopping_rule.keep_reference_records([rec(1, 0.25)], path)  # seed 0 absent now: kept all the same
    assert [(r["seed"], r["recall@20"]) for r in kept] == [(0, 0.1), (1, 0.25)]
    assert json.loads(path.read_text()) == kept
    png = stopping_rule.plot_reruns(kept, [{**rec(1, 0.3), "stop_trend_windows": [13, 26]}], tmp_path / "p.png")
    assert png.stat().st_size > 0


def test_the_log_says_when_the_trend_test_keeps_a_run_going(monkeypatch, caplog) -> None:
    scripted_validation(monkeypatch, 3, climb_back_curve)
    with caplog.at_level("INFO", logger="dgmrec.train"):
        fit(make_toy_dataset(), replace(LIGHTGCN, epochs=90), progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "dgmrec.train"]
    assert lines[26].startswith("epoch 81:") and lines[26].endswith("26 of 26 validations without a better one; "
                                                                    "still climbing: going on)")
    assert not any("still climbing" in line for line in lines[:26])
