"""The loss functions: the distinct-row InfoNCE equals the batch x batch form; the CSR product's gradient."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dgmrec_core.graphs import CsrProduct
from dgmrec_core.losses import RowGroups, info_nce


def batch_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """The textbook form: a (batch x batch) matrix of cosine logits and cross-entropy on its diagonal."""
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / temperature
    return F.cross_entropy(logits, torch.arange(a.shape[0]))


@pytest.mark.parametrize("same_rows", [True, False])
def test_distinct_row_info_nce_equals_the_batch_form_with_repeats(same_rows: bool) -> None:
    g = torch.Generator().manual_seed(0)
    users = torch.randint(0, 30, (200,), generator=g)  # many repeats, as in a BPR batch on dense data
    items = users if same_rows else torch.randint(0, 50, (200,), generator=g)
    table_a = torch.randn(30, 8, generator=g, requires_grad=True)
    table_b = torch.randn(30 if same_rows else 50, 8, generator=g, requires_grad=True)

    expected = batch_info_nce(table_a[users], table_b[items], 0.2)
    exp_grads = torch.autograd.grad(expected, (table_a, table_b))
    got = info_nce(table_a, table_b, 0.2, RowGroups.of(users), RowGroups.of(items))
    got_grads = torch.autograd.grad(got, (table_a, table_b))

    assert len(RowGroups.of(users).unique) < len(users)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for g_got, g_exp in zip(got_grads, exp_grads):
        torch.testing.assert_close(g_got, g_exp, rtol=1e-4, atol=1e-6)


def test_info_nce_without_groups_is_the_batch_form_and_bf16_stays_close() -> None:
    a, b = torch.randn(64, 16), torch.randn(64, 16)
    torch.testing.assert_close(info_nce(a, b, 0.5), batch_info_nce(a, b, 0.5), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(info_nce(a, b, 0.5, bf16=True), batch_info_nce(a, b, 0.5), rtol=2e-2, atol=2e-2)
    aligned = info_nce(a, a, 0.5)
    assert aligned < info_nce(a, b, 0.5)  # a row matched with itself is the easiest positive


def test_csr_product_gradient_matches_the_dense_product() -> None:
    g = torch.Generator().manual_seed(1)
    dense = torch.randn(7, 5, generator=g) * (torch.rand(7, 5, generator=g) < 0.4)
    h = torch.randn(5, 3, generator=g, requires_grad=True)
    graph = dense.to_sparse_csr()
    out = CsrProduct.apply(h, graph, dense.T.to_sparse_csr())
    weights = torch.randn(7, 3, generator=g)
    (grad,) = torch.autograd.grad((out * weights).sum(), h)
    torch.testing.assert_close(out, dense @ h)
    torch.testing.assert_close(grad, dense.T @ weights)


def test_decoded_match_equals_info_nce_plus_mse_of_the_decoded_rows() -> None:
    from torch import nn

    from dgmrec_core.losses import decoded_match

    torch.manual_seed(0)
    layer = nn.Linear(8, 300)
    z = torch.randn(20, 8, requires_grad=True)
    x = torch.randn(20, 300)
    fast = decoded_match(layer, z, x, 0.1)
    slow = info_nce(layer(z), x, 0.1) + F.mse_loss(layer(z), x)
    assert torch.allclose(fast, slow, atol=1e-5)
    grad_fast = torch.autograd.grad(fast, [z, layer.weight])
    grad_slow = torch.autograd.grad(slow, [z, layer.weight])
    for a, b in zip(grad_fast, grad_slow):
        assert torch.allclose(a, b, atol=1e-5)


def test_decoded_mse_equals_mse_of_the_decoded_rows() -> None:
    from torch import nn

    from dgmrec_core.losses import decoded_mse

    torch.manual_seed(1)
    layer = nn.Linear(6, 200)
    z, x = torch.randn(15, 6), torch.randn(15, 200)
    fast, slow = decoded_mse(layer, z, x), F.mse_loss(layer(z), x)
    assert torch.allclose(fast, slow, atol=1e-5)
    params = list(layer.parameters())
    for a, b in zip(torch.autograd.grad(fast, params), torch.autograd.grad(slow, params)):
        assert torch.allclose(a, b, atol=1e-5)


def _grad(loss_fn, *tensors):
    for t in tensors:
        t.grad = None
    loss = loss_fn()
    loss.backward()
    return loss.detach(), [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("grouped", [True, False])
def test_sampled_anchors_estimate_the_full_info_nce_without_bias(grouped: bool) -> None:
    """nce_anchors: the mean over draws of the sampled loss and gradient is the full loss and gradient (the
    estimator is unbiased), a single draw is not; anchors >= the distinct rows is the full form, bit for bit."""
    torch.manual_seed(0)
    a = torch.randn(12, 6, requires_grad=True)
    b = torch.randn(12, 6, requires_grad=True)
    rows = torch.tensor([0, 1, 1, 2, 3, 3, 3, 5, 7, 8, 8, 11, 4, 6, 9, 10])
    ga, gb = (RowGroups.of(rows), RowGroups.of(rows.flip(0))) if grouped else (None, None)
    full, full_grads = _grad(lambda: info_nce(a, b, 0.2, ga, gb), a, b)
    same, same_grads = _grad(lambda: info_nce(a, b, 0.2, ga, gb, anchors=12), a, b)
    assert torch.equal(same, full) and all(torch.equal(x, y) for x, y in zip(same_grads, full_grads))
    draws = [_grad(lambda: info_nce(a, b, 0.2, ga, gb, anchors=4), a, b) for _ in range(4000)]
    mean_loss = torch.stack([d[0] for d in draws]).mean()
    spread = torch.stack([d[0] for d in draws]).std()
    assert spread > 1e-3  # one draw is an estimate, not the loss
    assert abs(mean_loss - full) < 4 * spread / len(draws) ** 0.5
    for k, g in enumerate(full_grads):
        mean_grad = torch.stack([d[1][k] for d in draws]).mean(0)
        assert torch.allclose(mean_grad, g, atol=0.05 * g.abs().max())
