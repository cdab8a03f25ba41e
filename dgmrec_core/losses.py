"""Loss functions of DGMRec: BPR, InfoNCE, the CLUB mutual-information upper bound, perturbation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .feature_rows import product_in_rows_precision


def bpr_loss(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Bayesian personalised ranking: -log sigmoid(u.p - u.n), averaged."""
    return -F.logsigmoid((user * pos).sum(-1) - (user * neg).sum(-1)).mean()


class RowGroups(NamedTuple):
    """The distinct values of an index vector, where each entry sits among them, and log of their counts."""

    unique: torch.Tensor
    inverse: torch.Tensor
    log_counts: torch.Tensor

    @classmethod
    def of(cls, rows: torch.Tensor) -> "RowGroups":
        unique, inverse, counts = torch.unique(rows, return_inverse=True, return_counts=True)
        return cls(unique, inverse, counts.float().log())


def sample_anchors(n: int, anchors: int, device: torch.device) -> torch.Tensor | None:
    """``anchors`` distinct positions among ``n``, drawn uniformly (torch's generator); None keeps all of them
    (``anchors`` 0, or not fewer than ``n``)."""
    return torch.randperm(n, device=device)[:anchors] if 0 < anchors < n else None


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float, rows_a: RowGroups | None = None,
             rows_b: RowGroups | None = None, *, bf16: bool = False, anchors: int = 0) -> torch.Tensor:
    """InfoNCE with cosine similarity of ``a[rows_a]`` against ``b[rows_b]`` (whole tensors when None).

    Row i of the first is scored against every row of the second; row i of the second is its positive.
    A batch repeats users and items, so the similarities are computed between distinct rows only and
    each distinct negative is weighted by its count (log-count added to its logit): the same loss and
    gradient as the (batch x batch) form, on a (distinct x distinct) matrix, several times smaller on
    dense data. The temperature scales ``a`` before the product, not the logits: same value, less work.
    ``bf16`` computes the similarity product in bfloat16 (the softmax stays float32).

    ``anchors`` > 0 scores only that many distinct anchors, drawn uniformly, against every distinct row of
    the second (``config.nce_anchors``): the rows of the sampled anchors, summed and scaled by (distinct
    anchors / sampled) / rows, estimate the mean over all rows without bias, loss and gradient alike, on an
    (anchors x distinct) matrix.
    """
    ua = a if rows_a is None else a[rows_a.unique]
    ub = b if rows_b is None else b[rows_b.unique]
    if ua.shape[0] == 0 or ub.shape[0] == 0:
        return a.new_zeros(())
    ia = torch.arange(ua.shape[0], device=a.device) if rows_a is None else rows_a.inverse
    ib = torch.arange(ub.shape[0], device=a.device) if rows_b is None else rows_b.inverse
    if ia.shape != ib.shape:
        raise ValueError(f"info_nce needs as many positives as anchors, got {ia.shape[0]} and {ib.shape[0]}")
    n_rows, weight = ia.shape[0], 1.0
    picked = sample_anchors(ua.shape[0], anchors, a.device)
    if picked is not None:  # the sampled anchors' rows, renumbered among the sampled
        position = torch.full((ua.shape[0],), -1, dtype=torch.long, device=a.device)
        position[picked] = torch.arange(len(picked), device=a.device)
        rows = position[ia] >= 0
        weight = ua.shape[0] / len(picked)
        ua, ia, ib_all, ib = ua[picked], position[ia][rows], ib, ib[rows]
    else:
        ib_all = ib
    ua, ub = F.normalize(ua, dim=1) / temperature, F.normalize(ub, dim=1)
    if bf16:  # the log-counts stay float32, added after the product
        with torch.autocast(ua.device.type, dtype=torch.bfloat16):
            logits = (ua @ ub.T).float()
        if rows_b is not None:
            logits = logits + rows_b.log_counts
    else:
        if rows_b is not None:  # the log-counts ride in the product as one more column: no pass over the logits
            ua = torch.cat([ua, ua.new_ones(ua.shape[0], 1)], dim=1)
            ub = torch.cat([ub, rows_b.log_counts[:, None]], dim=1)
        logits = ua @ ub.T
    # log_softmax is one fused pass forward and back; the positives' own log-counts (data, no gradient) are
    # taken off again, over every row
    scores = -F.log_softmax(logits, dim=1)[ia, ib]
    loss = scores.mean() if picked is None else scores.sum() * (weight / n_rows)
    return loss + rows_b.log_counts[ib_all].mean() if rows_b is not None else loss


def l2_norms(*tensors: torch.Tensor) -> torch.Tensor:
    """Sum of the Frobenius norms of ``tensors`` divided by the batch size (rows of the last)."""
    return sum(t.norm(p=2) for t in tensors) / max(1, tensors[-1].shape[0])


def perturb(x: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """x + sign(x) * normalize(uniform noise) * eps: a small push away from zero along each coordinate."""
    noise = F.normalize(torch.rand_like(x), dim=-1)
    return x + torch.sign(x) * noise * eps


class CLUB(nn.Module):
    """CLUB (Cheng et al., 2020): a variational upper bound of I(x; y) with a Gaussian q(y | x).

    ``learning_loss`` fits q on (x, y) pairs; ``forward`` returns the upper-bound estimate, which the
    model minimises to push the specific part x and the general part y apart.
    """

    def __init__(self, dim: int, hidden: int = 32) -> None:
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.logvar = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim), nn.Tanh())

    def learning_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of y under q(y | x) (up to constants)."""
        mu, logvar = self.mu(x), self.logvar(x)
        return ((mu - y) ** 2 / logvar.exp() + logvar).sum(1).mean()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.mu(x), self.logvar(x)
        inv_var = (-logvar).exp()
        positive = -((mu - y) ** 2 * inv_var).sum(1)
        shuffled = y[torch.randperm(y.shape[0], device=y.device)]
        negative = -((mu - shuffled) ** 2 * inv_var).sum(1)
        return (positive - negative).mean() / 2


class DecoderGram(NamedTuple):
    """What |layer(z)|^2 needs of a linear decoder of weight W (D, d_in) and bias b: W^T W, W^T b and b . b."""

    ww: torch.Tensor
    wb: torch.Tensor
    bb: torch.Tensor

    @classmethod
    def of(cls, layer: nn.Linear) -> "DecoderGram":
        weight, bias = layer.weight, layer.bias
        return cls(weight.T @ weight, weight.T @ bias, bias @ bias)


class DecoderTargets(NamedTuple):
    """Real feature rows x (n, D) as the decoder losses read them: ``x W`` (n, d_in) for a linear decoder
    of weight W (D, d_in), ``x . b`` (n,) for its bias b, ``|x|^2`` (n,), the width D, and the decoder's
    ``DecoderGram``: made once, read by every decoder loss of a batch on the same decoder."""

    xw: torch.Tensor
    xb: torch.Tensor
    sq: torch.Tensor
    width: int
    gram: DecoderGram

    @classmethod
    def of(cls, layer: nn.Linear, x: torch.Tensor, sq: torch.Tensor | None = None) -> "DecoderTargets":
        """``sq``: the rows' squared norms where already known. Rows in a lower precision than the layer
        (``config.feature_precision``) are multiplied in theirs; the products come back in the layer's."""
        xw, xb = product_in_rows_precision(x, layer.weight), product_in_rows_precision(x, layer.bias)
        sq = (x * x).sum(1, dtype=layer.weight.dtype) if sq is None else sq
        return cls(xw, xb, sq, x.shape[1], DecoderGram.of(layer))

    def rows(self, index: torch.Tensor) -> "DecoderTargets":
        return DecoderTargets(self.xw[index], self.xb[index], self.sq[index], self.width, self.gram)


@dataclass(frozen=True)
class RowTargets:
    """Decoder targets of some of a batch's rows: the rows, each row's position among them (-1: not there)."""

    rows: torch.Tensor
    position: torch.Tensor
    targets: DecoderTargets

    def at(self, rows: torch.Tensor) -> DecoderTargets:
        return self.targets.rows(self.position[rows])


def _targets(layer: nn.Linear, x: torch.Tensor | DecoderTargets) -> DecoderTargets:
    return x if isinstance(x, DecoderTargets) else DecoderTargets.of(layer, x)


def _decoded_norms(gram: DecoderGram, z: torch.Tensor) -> torch.Tensor:
    """|layer(z_i)|^2 per row, from the layer's W^T W and W^T b (no decoded row)."""
    return ((z @ gram.ww) * z).sum(1) + 2 * (z @ gram.wb) + gram.bb


def decoded_mse(layer: nn.Linear, z: torch.Tensor, x: torch.Tensor | DecoderTargets) -> torch.Tensor:
    """``mse_loss(layer(z), x)`` for a linear ``layer`` from small codes to wide features, without decoding:
    |layer(z_i) - x_i|^2 = |layer(z_i)|^2 - 2 (z_i . (W^T x_i) + b . x_i) + |x_i|^2. ``x``: the feature rows
    or their ``DecoderTargets``."""
    if z.shape[0] == 0:
        return z.new_zeros(())
    t = _targets(layer, x)
    squared_error = _decoded_norms(t.gram, z) - 2 * ((z * t.xw).sum(1) + t.xb) + t.sq
    return squared_error.clamp_min(0).sum() / (z.shape[0] * t.width)


def decoded_match(layer: nn.Linear, z: torch.Tensor, x: torch.Tensor | DecoderTargets,
                  temperature: float) -> torch.Tensor:
    """``info_nce(layer(z), x, temperature) + mse_loss(layer(z), x)`` without decoding a single row.

    ``layer`` maps small codes ``z`` (n, d_in) to wide features (n, d_out), e.g. 128 -> 4,096. Being linear,
    layer(z_i) . x_j = z_i . (W^T x_j) + b . x_j and |layer(z_i)|^2 = z_i^T W^T W z_i + 2 b^T W z_i + |b|^2,
    so both terms follow from ``x @ W`` and ``W^T W``: O(n d_out d_in + n^2 d_in) instead of the
    O(n^2 d_out) of the cosine logits plus the O(n d_out d_in) decoding, forward and backward. The same
    loss and gradient up to rounding (tests/test_losses.py). ``x``: the feature rows or their
    ``DecoderTargets``.
    """
    t = _targets(layer, x)
    if z.shape[0] == 0 or t.xw.shape[0] == 0:
        return z.new_zeros(())
    if z.shape[0] != t.xw.shape[0]:
        raise ValueError(f"decoded_match needs as many positives as anchors, got {z.shape[0]} and {t.xw.shape[0]}")
    sq_norm = _decoded_norms(t.gram, z)
    row_scale = 1 / (sq_norm.clamp_min(0).sqrt().clamp_min(1e-12) * temperature)  # 1 / (|layer(z_i)| t)
    # (i, j): layer(z_i) . x_j / (|layer(z_i)| |x_j| t), one product of the rows [z_i, 1] / (|layer(z_i)| t)
    # with the rows [x_j W, x_j . b] / |x_j|: no elementwise pass over the (n, n) logits
    left = torch.cat([z, z.new_ones(z.shape[0], 1)], dim=1) * row_scale[:, None]
    right = torch.cat([t.xw, t.xb[:, None]], dim=1) / t.sq.sqrt().clamp_min(1e-12)[:, None]
    nce = -F.log_softmax(left @ right.T, dim=1).diagonal().mean()
    dots = (z * t.xw).sum(1) + t.xb  # layer(z_i) . x_i
    squared_error = sq_norm - 2 * dots + t.sq
    return nce + squared_error.clamp_min(0).sum() / (z.shape[0] * t.width)
