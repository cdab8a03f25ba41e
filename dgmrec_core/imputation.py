"""The simple references a missing-modality generator must beat, as functions of the same shape.

Each takes the source features of the items to fill (``x_src``, (n, d_src)) and the items that observe
both modalities in training (``pairs_src``, ``pairs_dst``), and returns float32 (n, d_dst):

- ``mean_imputation``: the mean of the observed destination rows, for every item;
- ``ridge_imputation``: a closed-form ridge map from source to destination features, fitted on the pairs;
- ``direct_imputation``: the source vector itself, for encoders whose spaces are aligned (same size);
- nearest-neighbour imputation lives in :mod:`dgmrec_core.generation_eval` (it needs the catalog).
"""
from __future__ import annotations

import numpy as np

RIDGE_LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
VALIDATION_SHARE = 0.2


def mean_imputation(n: int, observed_dst: np.ndarray) -> np.ndarray:
    """The mean of the observed destination rows, repeated ``n`` times."""
    rows = np.asarray(observed_dst, dtype=np.float32)
    if not len(rows):
        raise ValueError("mean imputation needs at least one observed row")
    return np.repeat(rows.mean(0, keepdims=True), n, axis=0)


def ridge_imputation(x_src: np.ndarray, pairs_src: np.ndarray, pairs_dst: np.ndarray, *, seed: int = 0,
                     lambdas: tuple[float, ...] = RIDGE_LAMBDAS) -> np.ndarray:
    """Ridge regression dst ~ src on the pairs (centred), its penalty chosen on a seeded fifth of them.

    Penalties are relative: ``lambda`` times the mean eigenvalue of the source covariance, so the
    choice does not depend on the features' scale. The map is refitted on all pairs with the best one.
    """
    a = np.asarray(pairs_src, dtype=np.float64)
    b = np.asarray(pairs_dst, dtype=np.float64)
    if len(a) < 5:
        raise ValueError("a ridge map needs at least five items observing both modalities")
    order = np.random.default_rng(seed).permutation(len(a))
    n_valid = max(1, int(VALIDATION_SHARE * len(a)))
    valid, train = order[:n_valid], order[n_valid:]
    errors = [((_ridge(a[train], b[train], lam)(a[valid]) - b[valid]) ** 2).mean() for lam in lambdas]
    best = lambdas[int(np.argmin(errors))]
    return _ridge(a, b, best)(np.asarray(x_src, dtype=np.float64)).astype(np.float32)


def _ridge(a: np.ndarray, b: np.ndarray, lam: float):
    mean_a, mean_b = a.mean(0), b.mean(0)
    ac = a - mean_a
    gram = ac.T @ ac
    penalty = lam * max(float(np.trace(gram)) / gram.shape[0], 1e-12)
    weights = np.linalg.solve(gram + penalty * np.eye(gram.shape[0]), ac.T @ (b - mean_b))
    return lambda x: (x - mean_a) @ weights + mean_b


def direct_imputation(x_src: np.ndarray, dim_dst: int) -> np.ndarray | None:
    """The source vectors themselves when they have the destination's size (aligned encoders), else None."""
    x = np.asarray(x_src, dtype=np.float32)
    return x.copy() if x.shape[1] == dim_dst else None
