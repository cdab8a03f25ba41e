"""The early-stopping rule shared by every model: the reference code's patience, and a trend test that keeps a
run going while its validation curve still climbs back from an early peak (docs/DESIGN.md, "Stopping rule")."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def rise_in_sigmas(scores: Sequence[float]) -> float:
    """The least-squares slope of ``scores`` against their order, in standard errors of that slope.

    Positive and large: the scores climb beyond their scatter. 0 for fewer than three scores or a flat
    line; +-inf for a perfect straight line."""
    n = len(scores)
    if n < 3:
        return 0.0
    y = np.asarray(scores, dtype=np.float64)
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2
    sxx = float(x @ x)
    slope = float(x @ y) / sxx
    residual = y - y.mean() - slope * x
    scatter = float(residual @ residual) / (n - 2)
    if scatter <= 1e-24 * max(1.0, float(y @ y)):  # an exact line: its sign decides
        return math.copysign(math.inf, slope) if slope else 0.0
    return slope / math.sqrt(scatter / sxx)


def should_stop(stale: int, patience: int, scores: Sequence[float], rising_sigmas: float) -> bool:
    """Stop after ``patience`` validations without a better score, unless the last ``patience`` scores still
    rise by more than ``rising_sigmas`` standard errors (``rising_sigmas`` <= 0: the reference rule alone).

    The reference rule stops a run whose curve peaked early, dipped and is climbing back more slowly than
    ``patience`` validations allow; the trend test lets it go on until it passes that peak or flattens."""
    if stale < patience:
        return False
    if rising_sigmas <= 0:
        return True
    return rise_in_sigmas(list(scores)[-patience:]) <= rising_sigmas
