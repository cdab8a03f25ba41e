"""Memory of training: features shared with the data (take_features), compact best states, the fingerprint."""
from __future__ import annotations

import copy
import hashlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import make_toy_dataset
from dgmrec_core.checkpoint import compact_state, dataset_fingerprint, load_model, model_state, restore_state
from dgmrec_core.config import DGMRecConfig
from dgmrec_core.trainer import fit
from test_model import _model

# no generation refit at the end (its 1,000 steps are most of a toy run's time) unless a test asks for one
FAST = DGMRecConfig(epochs=4, batch_size=128, patience=50, knn_k=5, refresh_every=2, seed=7, eval_every=1,
                    gen_refit_steps=0)


@pytest.fixture(scope="module")
def copied():
    """A run with copied features (the default) and its data: the reference the other runs must match."""
    dataset = make_toy_dataset()
    original = [m.values.copy() for m in dataset.modalities]
    return dataset, original, fit(dataset, FAST, progress=False)


def test_taken_features_train_exactly_like_copied_ones_and_share_the_data_arrays(copied) -> None:
    copied_data, original, copied = copied
    taken_data = make_toy_dataset()
    taken = fit(taken_data, FAST, progress=False, take_features=True)
    assert [h["loss"] for h in taken.history] == [h["loss"] for h in copied.history]
    assert taken.test == copied.test
    for m, (before, mod) in enumerate(zip(original, copied_data.modalities)):
        assert np.array_equal(mod.values, before)  # the default leaves the caller's data as it was
        assert not np.shares_memory(mod.values, copied.model.features(m).numpy())
    for m, (before, mod) in enumerate(zip(original, taken_data.modalities)):
        assert np.shares_memory(mod.values, taken.model.features(m).numpy())  # one copy of the features
        assert np.array_equal(mod.values[mod.observed], before[mod.observed])  # observed rows untouched
        assert torch.equal(taken.model.features(m), copied.model.features(m))  # generated rows alike


def test_features_that_cannot_be_shared_are_copied() -> None:
    dataset = make_toy_dataset()
    for mod in dataset.modalities:
        mod.values.setflags(write=False)  # e.g. a read-only memory map
    model = _model(dataset, FAST, take_features=True)
    for m, mod in enumerate(dataset.modalities):
        assert not np.shares_memory(mod.values, model.features(m).numpy())
    writable = make_toy_dataset()  # trained features (parameters) are never the data's arrays either
    trained = _model(writable, replace(FAST, train_features=True), take_features=True)
    for m, mod in enumerate(writable.modalities):
        assert isinstance(trained.features(m), torch.nn.Parameter)
        assert not np.shares_memory(mod.values, trained.features(m).detach().numpy())


def test_compact_state_holds_only_the_unobserved_rows_and_restores_exactly() -> None:
    model = fit(make_toy_dataset(), FAST, progress=False).model  # generated rows, trained weights
    full, compact = model_state(model), model_state(model, compact=True)
    for m in range(model.n_modalities):
        key, missing = f"feat_{m}", ~model.observed[:, m]
        assert key not in compact["weights"]
        assert compact["feature_rows"][key].shape == (int(missing.sum()), model.dims[m])
        assert 0 < missing.sum() < model.n_items
    made = compact_state(model, full)  # a whole state read from a checkpoint, made compact on resume
    assert made["weights"].keys() == compact["weights"].keys()
    assert all(torch.equal(made["feature_rows"][k], v) for k, v in compact["feature_rows"].items())
    with torch.no_grad():  # disturb what training changes: weights and the generated rows
        for m in range(model.n_modalities):
            model.features(m)[~model.observed[:, m]] += 1.0
        model.enc_general[0].weight.mul_(2.0)
    restore_state(model, compact)
    for k, v in model.state_dict().items():
        assert torch.equal(v, full["weights"][k]), k


def test_compact_state_of_another_shape_is_refused() -> None:
    a, b = _model(make_toy_dataset(), FAST), _model(make_toy_dataset(), replace(FAST, embedding_size=32))
    state = copy.deepcopy(model_state(a, compact=True))
    state["weights"].pop("enc_general.0.weight")
    with pytest.raises(RuntimeError, match="does not fit"):
        restore_state(a, state)
    with pytest.raises(RuntimeError):
        restore_state(b, model_state(a, compact=True))


@pytest.mark.parametrize("refit", [0, 50])
def test_a_checkpoint_of_a_run_with_taken_features_loads_without_the_data(tmp_path, refit) -> None:
    """Without the generation refit the file keeps the compact best state beside the whole current one;
    with it the refitted best is written whole. Either way it loads alone and gives the trained model."""
    config = replace(FAST, epochs=6, gen_refit_steps=refit)  # validated every epoch: the best is an earlier one
    result = fit(make_toy_dataset(), config, checkpoint=tmp_path / "m.pt", progress=False, take_features=True)
    loaded, payload = load_model(tmp_path / "m.pt")
    assert ("feature_rows" in payload["best"]) == (refit == 0)
    assert "feature_rows" not in payload["current"]["state"]
    for a, b in zip(result.model.final_embeddings(), loaded.final_embeddings()):
        assert torch.allclose(a, b)
    for m in range(loaded.n_modalities):
        assert torch.equal(loaded.features(m), result.model.features(m))


def test_resume_with_taken_features_continues_like_an_uninterrupted_run(tmp_path, copied) -> None:
    full = copied[2]
    fit(make_toy_dataset(), replace(FAST, epochs=2), checkpoint=tmp_path / "m.pt", progress=False,
        take_features=True)
    resumed = fit(make_toy_dataset(), FAST, checkpoint=tmp_path / "m.pt", resume=True, progress=False,
                  take_features=True)
    assert resumed.history[-1]["loss"] == pytest.approx(full.history[-1]["loss"], rel=1e-5)
    assert resumed.test == pytest.approx(full.test, rel=1e-5)


def _fingerprint_as_before(dataset) -> str:
    """The fingerprint as earlier versions computed it: sha256 over the arrays' byte strings."""
    inter = dataset.interactions
    h = hashlib.sha256(np.asarray([inter.n_users, inter.n_items], dtype=np.int64).tobytes())
    for split in (inter.train, inter.valid, inter.test):
        h.update(np.ascontiguousarray(split, dtype=np.int64).tobytes())
    for mod in dataset.modalities:
        h.update(mod.name.encode())
        h.update(np.ascontiguousarray(mod.observed).tobytes())
        h.update(np.ascontiguousarray(mod.values, dtype=np.float32).tobytes())
    return h.hexdigest()


def test_fingerprint_is_the_hash_of_the_data_bytes_as_before() -> None:
    """Hashed in place now, without copies: the same value as the byte strings of earlier versions, so
    checkpoints written by them still resume; also for an empty split (a data set without validation rows)."""
    dataset = make_toy_dataset()
    before = _fingerprint_as_before(dataset)
    assert dataset_fingerprint(dataset) == before
    dataset.modalities[0].values[0, 0] += 1.0
    assert dataset_fingerprint(dataset) == _fingerprint_as_before(dataset) != before
    dataset.interactions.valid = dataset.interactions.valid[:0]
    assert dataset_fingerprint(dataset) == _fingerprint_as_before(dataset)
