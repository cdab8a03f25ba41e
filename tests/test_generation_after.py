"""gen_training 'after': training is the paper's exactly, and the contrastive generator is fitted afterwards.

On the linear toy catalog of test_generation_contrastive (an item's image is a linear map of its text), the
recommendation model must equal the one trained with --generator paper, bit for bit, while generation must
find the hidden images as the contrastive generator does and unlike the paper's.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from test_generation_contrastive import CONFIG, _hidden_ranks, linear_dataset

from dgmrec_core import config as config_module
from dgmrec_core.checkpoint import load_model, read_checkpoint, save_checkpoint
from dgmrec_core.config import DGMRecConfig, with_predated
from dgmrec_core.errors import DataError
from dgmrec_core.generation_eval import hit_at_k
from dgmrec_core.trainer import config_changes, fit

AFTER = replace(CONFIG, gen_training="after")


@pytest.fixture(scope="module")
def runs() -> dict:
    dataset, image = linear_dataset()
    return {"dataset": dataset, "image": image,
            "after": fit(dataset, AFTER, progress=False),
            "paper": fit(dataset, replace(CONFIG, generator="paper"), progress=False)}


def test_training_is_the_papers_bit_for_bit(runs) -> None:
    after, paper = runs["after"], runs["paper"]
    assert after.best_epoch == paper.best_epoch
    assert [h["loss"] for h in after.history] == [h["loss"] for h in paper.history]
    with torch.no_grad():
        for a, b in zip(after.model.final_embeddings(), paper.model.final_embeddings()):
            assert torch.equal(a, b)  # recommendation scores: the paper's
        for m in range(2):  # the rows the model trained on, generated ones included
            assert torch.equal(after.model.features(m), paper.model.features(m))
    assert after.test == paper.test


def test_generation_after_training_finds_the_item_and_the_papers_does_not(runs) -> None:
    dataset, image = runs["dataset"], runs["image"]
    assert runs["after"].model.contrastive and not runs["paper"].model.contrastive
    after, generated = _hidden_ranks(runs["after"].model, dataset, image)
    paper, _ = _hidden_ranks(runs["paper"].model, dataset, image)
    assert hit_at_k(after, (10,))["hit@10"] > 0.5  # chance: 10 / 240
    assert np.median(after) < np.median(paper)
    unit = generated / np.linalg.norm(generated, axis=1, keepdims=True)
    sims = unit @ unit.T
    assert (sims.sum() - len(sims)) / (len(sims) * (len(sims) - 1)) < 0.5  # not collapsed onto one point


def test_before_the_refit_the_model_is_the_papers() -> None:
    from test_model import _model

    dataset, _ = linear_dataset(seed=1)
    model = _model(dataset, AFTER)
    assert not model.contrastive and not model.raw_generation  # the paper's terms and propagated space
    model.refit_generation(5)
    assert model.contrastive and model.raw_generation
    joint = _model(dataset, replace(AFTER, gen_training="joint"))
    assert joint.contrastive


def test_no_refit_leaves_the_papers_generator() -> None:
    dataset, _ = linear_dataset(seed=2)
    result = fit(dataset, replace(AFTER, epochs=2, gen_refit_steps=0), progress=False)
    assert not result.model.contrastive


def test_a_checkpoint_from_before_the_option_was_trained_joint(monkeypatch) -> None:
    saved = DGMRecConfig().to_dict()
    del saved["gen_training"]
    assert DGMRecConfig.from_saved(saved).gen_training == "joint"
    assert with_predated({"gen_training": "after"})["gen_training"] == "after"
    assert config_changes(saved, replace(DGMRecConfig(), gen_training="joint")) == ""
    assert "gen_training" in config_changes(saved, replace(DGMRecConfig(), gen_training="after"))
    assert DGMRecConfig.from_dict({}).gen_training == DGMRecConfig().gen_training  # a config file: today's default
    monkeypatch.setitem(config_module.PREDATED, "gen_training", "after")  # read from PREDATED, not the default
    assert DGMRecConfig.from_saved(saved).gen_training == "after"
    assert "gen_training" in config_changes(saved, replace(DGMRecConfig(), gen_training="joint"))


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(DataError, match="gen_training"):
        DGMRecConfig(gen_training="later")


def test_loading_a_checkpoint_that_predates_the_option_keeps_its_joint_generator(tmp_path, monkeypatch) -> None:
    """A joint-trained model without a refit: read as 'after' it would switch to the paper's generator."""
    dataset, _ = linear_dataset(seed=2)
    config = replace(CONFIG, epochs=2, gen_refit_steps=0, gen_training="joint")
    result = fit(dataset, config, checkpoint=tmp_path / "model.pt", progress=False)
    payload = read_checkpoint(tmp_path / "model.pt")
    del payload["config"]["gen_training"]  # as written before the option existed
    save_checkpoint(tmp_path / "old.pt", {k: v for k, v in payload.items() if k != "format"})
    loaded, _ = load_model(tmp_path / "old.pt")
    assert loaded.config.gen_training == "joint" and loaded.contrastive
    for mine, theirs in zip(loaded.generated_features(noise=False), result.model.generated_features(noise=False)):
        assert torch.equal(mine, theirs)
    # the value comes from PREDATED, not from today's default (the two agree today)
    monkeypatch.setitem(config_module.PREDATED, "gen_training", "after")
    assert load_model(tmp_path / "old.pt")[0].config.gen_training == "after"
