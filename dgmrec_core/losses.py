"""Loss functions of DGMRec: BPR, InfoNCE, the CLUB mutual-information upper bound, perturbation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bpr_loss(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Bayesian personalised ranking: -log sigmoid(u.p - u.n), averaged."""
    return -F.logsigmoid((user * pos).sum(-1) - (user * neg).sum(-1)).mean()


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float, *, bf16: bool = False) -> torch.Tensor:
    """InfoNCE with cosine similarity: row i of ``a`` against all rows of ``b``, row i of ``b`` the positive.

    The temperature scales ``a`` before the product, not the (batch x batch) logits: same value, less work.
    ``bf16`` computes the (batch x batch) similarity product in bfloat16 (the softmax stays float32).
    """
    if a.shape[0] == 0:
        return a.new_zeros(())
    a, b = F.normalize(a, dim=1) / temperature, F.normalize(b, dim=1)
    if bf16:
        with torch.autocast(a.device.type, dtype=torch.bfloat16):
            logits = (a @ b.T).float()
    else:
        logits = a @ b.T
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


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
