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


def trend_windows(patience: int) -> tuple[int, ...]:
    """The spans of recent validations the trend test reads: all ``patience`` of them (a long climb back from
    an early peak) and the last half (a dip that turned: falling, then climbing, within the patience)."""
    return tuple(sorted({patience, max(3, patience // 2)}))


def still_climbing(scores: Sequence[float], patience: int, rising_sigmas: float,
                   windows: Sequence[int] | None = None) -> bool:
    """Whether the last scores climb: over any of ``windows`` (default :func:`trend_windows`) recent scores, a
    least-squares slope more than ``rising_sigmas`` standard errors above zero."""
    recent = list(scores)[-patience:]
    spans = trend_windows(patience) if windows is None else windows
    return any(rise_in_sigmas(recent[-w:]) > rising_sigmas for w in spans)


def should_stop(stale: int, patience: int, scores: Sequence[float], rising_sigmas: float,
                windows: Sequence[int] | None = None) -> bool:
    """Stop after ``patience`` validations without a better score, unless the last scores still climb
    (:func:`still_climbing`; ``rising_sigmas`` <= 0: the reference rule alone).

    The reference rule stops a run whose curve peaked early, dipped and is climbing back more slowly than
    ``patience`` validations allow; the trend test lets it go on until it passes that peak or flattens.
    ``windows``: the trend test's spans (default :func:`trend_windows`; benchmarks replaying runs made under
    an earlier version pass that version's)."""
    if stale < patience:
        return False
    if rising_sigmas <= 0:
        return True
    return not still_climbing(scores, patience, rising_sigmas, windows)
