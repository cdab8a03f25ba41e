"""Per-modality feature matrices: loading with checks, observed rows, and imputation of missing rows."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError


def load_feature_matrix(path: str | Path, n_items: int, *, name: str) -> np.ndarray:
    """Load a (n_items, d) ``.npy`` feature matrix of modality ``name`` as float32.

    Row i must be the features of item i. Raises DataError when the file is unreadable, not a 2-D
    numeric array, has another row count, or holds NaN/inf (the first bad row is named, 0-based).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{name} feature file not found")
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(path, f"cannot read {name} features as a .npy array: {exc}") from exc
    if values.ndim != 2:
        raise DataError(path, f"{name} features must be a 2-D array (items x dims), got shape {values.shape}")
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise DataError(path, f"{name} features must be numeric, got dtype {values.dtype}")
    if values.shape[0] != n_items:
        raise DataError(path, f"{name} features have {values.shape[0]} rows but there are {n_items} "
                              f"items (row i must hold item i)")
    values = np.ascontiguousarray(values, dtype=np.float32)
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise DataError(path, f"{name} features contain NaN or inf in {int((~finite).sum())} row(s), "
                              f"the first shown (rows are 0-based)", row=bad)
    return values


def observed_from_rows(values: np.ndarray) -> np.ndarray:
    """bool (n_items,): True where the row has a non-zero entry (all-zero rows mean a missing modality)."""
    return np.any(values != 0, axis=1)


def shareable(values: np.ndarray, like) -> bool:
    """Whether ``values`` can stand in for the CPU tensor ``like`` (``torch.from_numpy``, then written to):
    float32, C-ordered, writable, of the same shape; not a read-only memory map, say."""
    return (like.device.type == "cpu" and values.dtype == np.float32 and values.flags.c_contiguous
            and values.flags.writeable and tuple(values.shape) == tuple(like.shape))


IMPUTE_CHUNK = 65_536  # rows copied at a time


def impute(values: np.ndarray, observed: np.ndarray, how: str = "mean", out: np.ndarray | None = None) -> np.ndarray:
    """``values`` (as float32) whose unobserved rows hold the mean of observed rows (``"mean"``) or 0
    (``"zero"``), written into ``out`` (a new array when None) chunk by chunk: no other full-size copy.

    With no observed row the fill is 0.
    """
    if how not in ("mean", "zero"):
        raise ValueError(f"imputation must be 'mean' or 'zero', got {how!r}")
    observed = np.asarray(observed, dtype=bool)
    n = values.shape[0]
    out = np.empty(values.shape, dtype=np.float32) if out is None else out
    for start in range(0, n, IMPUTE_CHUNK):
        out[start:start + IMPUTE_CHUNK] = values[start:start + IMPUTE_CHUNK]
    fill = np.zeros(out.shape[1], dtype=np.float32)
    if how == "mean" and observed.any():
        if n <= IMPUTE_CHUNK:
            fill = out[observed].mean(axis=0)
        else:  # the sum over chunks in float64
            total = sum(out[s:s + IMPUTE_CHUNK][observed[s:s + IMPUTE_CHUNK]].sum(0, dtype=np.float64)
                        for s in range(0, n, IMPUTE_CHUNK))
            fill = (total / observed.sum()).astype(np.float32)
    out[~observed] = fill
    return out
