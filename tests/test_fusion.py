"""config.fusion: the paper's fixed sum of modality parts, or a learned gate that starts at 0."""
from __future__ import annotations

from dataclasses import replace

import torch

from conftest import make_toy_dataset
from dgmrec_core.checkpoint import load_model
from dgmrec_core.config import DGMRecConfig
from dgmrec_core.trainer import fit
from test_model import _model

FAST = DGMRecConfig(epochs=4, batch_size=128, patience=50, knn_k=5, refresh_every=2, seed=7, gen_refit_steps=0)


def test_gated_fusion_starts_as_the_collaborative_embeddings_and_learns_its_gate() -> None:
    model = _model(make_toy_dataset(), replace(FAST, fusion="gated"))
    parts = model.forward_parts()
    users, items = model.fuse(parts)
    assert torch.equal(users, parts.e_u) and torch.equal(items, parts.e_i)
    paper = _model(make_toy_dataset(), FAST)
    paper_users, _ = paper.fuse(paper.forward_parts())
    assert not torch.allclose(paper_users, paper.forward_parts().e_u)  # the paper's sum adds content at once
    loss, _ = model.loss(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]))
    loss.backward()
    assert model.fusion_gate.grad is not None and float(model.fusion_gate.grad.abs()) > 0


def test_gated_fusion_trains_and_its_checkpoint_restores_the_gate(tmp_path) -> None:
    dataset = make_toy_dataset()
    result = fit(dataset, replace(FAST, fusion="gated"), checkpoint=tmp_path / "model.pt", progress=False)
    gate = float(result.model.fusion_gate.detach())
    assert gate != 0.0
    assert result.test["recall@20"] > 0.5  # the toy answer (two clusters) is learned
    loaded, _ = load_model(tmp_path / "model.pt")
    assert float(loaded.fusion_gate.detach()) == gate
    for mine, theirs in zip(loaded.final_embeddings(), result.model.final_embeddings()):
        assert torch.equal(mine, theirs)
    assert "fusion_gate" not in _model(dataset, FAST).state_dict()  # the paper's state is unchanged


def test_items_added_after_training_are_fused_with_the_same_gate() -> None:
    """``cold_item_embeddings`` (items appended to an index) weighs their content parts as training did: by
    nothing at a gate of 0, by the gate once it has moved."""
    dataset = make_toy_dataset()
    model = _model(dataset, replace(FAST, fusion="gated"))
    model.eval()
    feats = [torch.as_tensor(m.values[:4]) for m in dataset.modalities]
    neighbours = model._neighbour_ids_of(feats)
    assert torch.equal(model.cold_item_embeddings(feats), neighbours)
    with torch.no_grad():
        model.fusion_gate.fill_(2.0)
    paper = _model(dataset, FAST)
    paper.load_state_dict({k: v for k, v in model.state_dict().items() if k != "fusion_gate"})
    paper.eval()
    content = paper.cold_item_embeddings(feats) - paper._neighbour_ids_of(feats)
    assert torch.allclose(model.cold_item_embeddings(feats), neighbours + 2.0 * content, atol=1e-6)
