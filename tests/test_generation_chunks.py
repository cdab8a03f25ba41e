"""Generation chunk by chunk (memory O(chunk x d) beyond the features) gives what one pass over every item
gives: the generated features, the calibration and the rows written into the missing features."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from conftest import make_toy_dataset
from dgmrec_core import generator
from dgmrec_core.config import DGMRecConfig
from dgmrec_core.lightgcn import build_model


def _model(config: DGMRecConfig):
    dataset = make_toy_dataset(n_users=50, n_items=97)
    torch.manual_seed(1)
    model = build_model(config, dataset.n_users, dataset.n_items, [m.dim for m in dataset.modalities],
                        [m.name for m in dataset.modalities])
    model.attach(dataset)
    return model


def test_moments_of_chunks_match_torch() -> None:
    x = torch.randn(101, 7) * 3 + 1
    moments = generator.Moments()
    for part in (x[:10], x[10:10], x[10:64], x[64:]):
        moments.add(part)
    mean, std = moments.mean_std()
    assert moments.count == 101
    assert torch.allclose(mean, x.mean(0), atol=1e-5) and torch.allclose(std, x.std(0), atol=1e-5)
    one = generator.Moments()
    one.add(x)
    assert torch.equal(one.mean_std()[0], x.mean(0)) and torch.equal(one.mean_std()[1], x.std(0))


@pytest.mark.parametrize("generator_name", ["contrastive", "paper"])
def test_chunked_generation_matches_one_pass(monkeypatch, generator_name: str) -> None:
    config = replace(DGMRecConfig(knn_k=5, seed=3), generator=generator_name)
    untouched, whole, chunked = _model(config), _model(config), _model(config)
    monkeypatch.setattr(generator, "GENERATION_CHUNK", 10)  # 97 items: ten chunks, the last of 7
    assert len(chunked._generation_chunks()) == (10 if generator_name == "contrastive" else 1)  # the paper's
    for model, chunk in ((whole, 10_000), (chunked, 10)):  # space propagates over the graph: one pass
        monkeypatch.setattr(generator, "GENERATION_CHUNK", chunk)
        torch.manual_seed(5)
        model.generate_missing()
    for m in range(whole.n_modalities):
        missing = ~whole.observed[:, m]
        assert not torch.equal(whole.features(m)[missing], untouched.features(m)[missing])
        assert torch.equal(whole.features(m)[~missing], untouched.features(m)[~missing])
        # float32 rounding: features of magnitude ~12, products whose blocking depends on the rows and the CPU
        # (2e-5 apart on one 2-thread machine)
        assert torch.allclose(whole.features(m), chunked.features(m), atol=1e-4)
        assert torch.allclose(getattr(whole, f"calib_{m}"), getattr(chunked, f"calib_{m}"), atol=1e-5)
    monkeypatch.setattr(generator, "GENERATION_CHUNK", 10_000)
    one_pass = whole.generated_features(noise=False)
    monkeypatch.setattr(generator, "GENERATION_CHUNK", 10)
    in_chunks = whole.generated_features(noise=False)
    for a, b in zip(one_pass, in_chunks):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)


def _trained(config: DGMRecConfig, monkeypatch, reuse: bool):
    """A toy run, and how many generation passes (``_raw_moments``) it made."""
    from conftest import make_toy_dataset as toy
    from dgmrec_core.trainer import fit

    passes = []
    real = generator.GenerationMixin._raw_moments
    monkeypatch.setattr(generator.GenerationMixin, "_raw_moments",
                        lambda self, inputs: passes.append(1) or real(self, inputs))
    if not reuse:  # every generation makes its own calibration pass, as before the reuse
        monkeypatch.setattr(generator.GenerationMixin, "_unchanged_calibration_pass", lambda self: None)
    result = fit(toy(n_users=50, n_items=97), config, progress=False)
    monkeypatch.undo()
    return result, len(passes)


def test_reusing_the_end_of_epoch_calibration_pass_trains_bit_for_bit_the_same(monkeypatch) -> None:
    """generate_missing takes update_calibration's pass when nothing changed since (the epoch's end, then
    validation and a checkpoint): the run is the same, weights and history, as when it makes its own pass,
    with one pass less per epoch after the first."""
    config = DGMRecConfig(epochs=4, batch_size=128, knn_k=5, refresh_every=2, eval_every=1, seed=3)
    (reused, reused_passes), (own, own_passes) = (_trained(config, monkeypatch, reuse) for reuse in (True, False))
    assert own_passes - reused_passes == config.epochs - 1
    untimed = [[{k: v for k, v in h.items() if k != "seconds"} for h in r.history] for r in (reused, own)]
    assert untimed[0] == untimed[1]
    state, other = reused.model.state_dict(), own.model.state_dict()
    assert all(torch.equal(state[k], other[k]) for k in state)


def test_a_changed_weight_makes_generation_pass_again(monkeypatch) -> None:
    model = _model(DGMRecConfig(knn_k=5))
    passes = []
    real = model._raw_moments
    monkeypatch.setattr(model, "_raw_moments", lambda inputs: passes.append(1) or real(inputs))
    model.update_calibration(keep_pass=True)
    model.generate_missing()  # nothing changed: update_calibration's pass is reused
    assert len(passes) == 1
    model.update_calibration(keep_pass=True)
    with torch.no_grad():
        model.decoder[0].weight.add_(0.01)  # an optimiser step, say
    model.generate_missing()
    assert len(passes) == 3
    model.update_calibration()  # a calibration outside an epoch's end (the refit's) keeps nothing
    model.generate_missing()
    assert len(passes) == 5
    model.update_calibration(keep_pass=True)
    model.finish_training(seed=0)  # training over: the kept pass is let go
    assert model._calibration_pass is None
