"""The paper's missing-modality and new-item protocols, generalised to M modalities, and a sparse setting.

Masks are bool (n_items, M) arrays of *observed* entries. MMRec's pickled mask dicts use the keys
``v`` (lost image), ``t`` (lost text), ``a`` (lost audio) and ``all`` (lost every modality) over item
indices; the matching modality names are ``image``, ``text`` and ``audio``.
"""
from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .atomic import atomic_path
from .data import Interactions
from .errors import DataError

MMREC_KEYS = {"image": "v", "text": "t", "audio": "a"}
_EPS = 1e-9


def _take(n: int, ratio: float) -> int:
    return int(np.floor(ratio * n + _EPS))


def make_missing_mask(n_items: int, n_modalities: int = 2, ratio: float = 2 / 3, seed: int = 0, *,
                      strata: np.ndarray | None = None) -> np.ndarray:
    """bool (n_items, n_modalities) observed mask following the paper's protocol.

    In each stratum (all items when ``strata`` is None) floor(ratio * size) random items are masked
    and cut, in that random order, into 2M near-equal parts (boundaries floor(j * k / 2M), as the
    paper's script): the first M parts lose every modality, part M + m loses only modality m.
    For M = 2 that is half losing both, a quarter losing image, a quarter losing text. With
    ``strata=cold_warm_strata(interactions, new_items)`` the counts are those of the paper's masks
    (on ML-100K: 559 both, 280 image, 281 text, as the shipped ``missing_items_0.666.npy``).
    """
    if not 0 <= ratio <= 1:
        raise DataError(None, f"the share of items masked (--ratio) must be in [0, 1], got {ratio}", field="ratio")
    if n_modalities < 1:
        raise DataError(None, "a mask needs at least one modality", field="modalities")
    if n_items < 1:
        raise DataError(None, f"the number of items (--items) must be >= 1, got {n_items}", field="items")
    rng = np.random.default_rng(seed)
    observed = np.ones((n_items, n_modalities), dtype=bool)
    groups = [np.arange(n_items)] if strata is None else [
        np.flatnonzero(strata == s) for s in np.unique(strata)]
    n_parts = 2 * n_modalities
    for members in groups:
        k = _take(len(members), ratio)
        chosen = rng.permutation(members)[:k]
        bounds = np.arange(n_parts + 1) * k // n_parts
        part = np.searchsorted(bounds, np.arange(k), side="right") - 1
        lose_all = part < n_modalities
        observed[chosen[lose_all]] = False
        observed[chosen[~lose_all], part[~lose_all] - n_modalities] = False
    return observed


def cold_warm_strata(interactions: Interactions, new_items: np.ndarray | None = None,
                     cold_ratio: float = 0.7) -> np.ndarray:
    """int (n_items,) strata of the paper's script: warm (+1) = top 30% by training count, new (+2).

    Items are ranked by training interactions (stable); the first ``cold_ratio`` of them are cold.
    """
    counts = np.bincount(interactions.train[:, 1], minlength=interactions.n_items)
    order = np.argsort(counts, kind="stable")
    strata = np.zeros(interactions.n_items, dtype=np.int64)
    strata[order[_take(interactions.n_items, cold_ratio):]] = 1
    if new_items is not None:
        strata[np.asarray(new_items, dtype=np.int64)] += 2
    return strata


def save_mask(path: str | Path, observed: np.ndarray, names: Sequence[str]) -> None:
    """Write an observed mask and its modality names to an ``.npz`` file, atomically."""
    observed = np.asarray(observed, dtype=bool)
    if observed.ndim != 2 or observed.shape[1] != len(names):
        raise ValueError(f"mask shape {observed.shape} does not match {len(names)} modality names")
    if Path(path).is_dir() or not Path(path).name or Path(path).name in (".", ".."):
        raise DataError(path, "is a folder: give the mask file to write (e.g. mask.npz)", field="--out")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, observed=observed, names=np.asarray(list(names), dtype=str))


def load_mask(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Read a mask written by :func:`save_mask`: (observed bool (n_items, M), modality names)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            observed, names = data["observed"], data["names"].tolist()
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise DataError(path, f"cannot read mask (.npz with 'observed' and 'names'): {exc}") from exc
    if observed.dtype != bool or observed.ndim != 2 or observed.shape[1] != len(names):
        raise DataError(path, f"mask must be bool (items, {len(names)}), "
                              f"got {observed.dtype} {observed.shape}")
    return observed, [str(n) for n in names]


def _key_columns(names: Sequence[str]) -> dict[str, int]:
    return {MMREC_KEYS[n]: m for m, n in enumerate(names) if n in MMREC_KEYS}


def mask_to_mmrec_dict(observed: np.ndarray,
                       names: Sequence[str] = ("image", "text")) -> dict[str, np.ndarray]:
    """MMRec dict of masked item indices: ``all`` lost every modality, ``v``/``t``/``a`` lost only that one.

    With M > 2 an item losing several but not all modalities appears under each key it lost.
    """
    observed = np.asarray(observed, dtype=bool)
    columns = _key_columns(names)
    if len(columns) != len(names) or observed.ndim != 2 or observed.shape[1] != len(names):
        raise ValueError(f"need an (items, {len(names)}) mask over modalities among {list(MMREC_KEYS)}, "
                         f"got {observed.shape} for {list(names)}")
    lost_all = ~observed.any(axis=1)
    out = {"all": np.flatnonzero(lost_all)}
    for key, m in columns.items():
        out[key] = np.flatnonzero(~observed[:, m] & ~lost_all)
    return out


def mask_from_mmrec_dict(d: dict, n_items: int, names: Sequence[str] = ("image", "text"), *,
                         source: str | Path | None = None) -> np.ndarray:
    """Observed mask (n_items, len(names)) from an MMRec dict; ``source`` names the file in errors."""
    columns = _key_columns(names)
    unknown = sorted(set(d) - set(columns) - {"all"})
    if unknown:
        raise DataError(source, f"unknown mask key(s) {unknown} for modalities {list(names)} "
                                f"(expected some of {sorted(columns) + ['all']})")
    observed = np.ones((n_items, len(names)), dtype=bool)
    for key, ids in d.items():
        ids = np.asarray(ids).ravel()
        if ids.size == 0:
            continue
        if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= n_items:
            raise DataError(source, f"mask key '{key}' must hold item indices in 0..{n_items - 1}", field=key)
        if key == "all":
            observed[ids] = False
        else:
            observed[ids, columns[key]] = False
    return observed


# The only globals a pickled MMRec mask needs: numpy arrays, their dtypes and scalars.
_SAFE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}


class _MaskUnpickler(pickle.Unpickler):
    """Admits numpy arrays, dtypes and scalars, lists, dicts and plain values; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: a mask may hold only numpy arrays, "
                                         "lists and dicts")
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent id: a mask may hold only numpy arrays, lists and dicts")


def _restricted_npy(f: BinaryIO) -> Any:
    """The object of a pickled ``.npy`` (an object array), read with :class:`_MaskUnpickler`."""
    version = np.lib.format.read_magic(f)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
        raise ValueError(f"unsupported .npy format version {version}")
    shape, _, dtype = read_header(f)
    if dtype.hasobject:
        return _MaskUnpickler(f).load()
    return np.fromfile(f, dtype=dtype, count=int(np.prod(shape))).reshape(shape)


def load_mmrec_mask(path: str | Path, n_items: int, names: Sequence[str] = ("image", "text")) -> np.ndarray:
    """Read MMRec's pickled ``missing_items_<ratio>.npy`` dict as an observed mask.

    The pickle goes through a restricted unpickler (numpy arrays, lists and dicts only), so a hostile
    file cannot run code: anything else is refused with a ``DataError``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "mask file not found")
    try:
        with open(path, "rb") as f:
            stored = _restricted_npy(f)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, AttributeError, TypeError, IndexError) as exc:
        raise DataError(path, f"cannot read MMRec mask (a pickled dict in .npy): {exc}") from exc
    d = stored.item() if isinstance(stored, np.ndarray) and stored.shape == () else stored
    if not isinstance(d, dict):
        raise DataError(path, "MMRec mask must hold a dict of item indices (keys t, v, all)")
    return mask_from_mmrec_dict(d, n_items, names, source=path)


def choose_new_items(interactions: Interactions, ratio: float = 0.2, seed: int = 0,
                     cold_ratio: float = 0.7) -> np.ndarray:
    """Sorted item indices of the new-item setting: floor(ratio * size) random cold and warm items each."""
    strata = cold_warm_strata(interactions, cold_ratio=cold_ratio)
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(members)[:_take(len(members), ratio)]
              for members in (np.flatnonzero(strata == s) for s in (0, 1))]
    return np.sort(np.concatenate(picked))


def load_new_items(path: str | Path, n_items: int) -> np.ndarray:
    """Read a ``new_items.npy`` array of item indices (sorted, distinct)."""
    try:
        ids = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(path, f"cannot read new items (.npy of item indices): {exc}") from exc
    ids = ids.ravel()
    if not np.issubdtype(ids.dtype, np.integer) or (ids.size and (ids.min() < 0 or ids.max() >= n_items)):
        raise DataError(path, f"new items must be integer item indices in 0..{n_items - 1}")
    return np.unique(ids).astype(np.int64)


def make_new_item_split(interactions: Interactions, ratio: float = 0.2, seed: int = 0, *,
                        new_items: np.ndarray | None = None) -> tuple[Interactions, np.ndarray]:
    """New-item setting: ``new_items`` (else :func:`choose_new_items`) get no train/valid interactions.

    As in the paper's script, those interactions move to the test split, next to the items' own test
    interactions; evaluate them with ``item_filter=new_items``. Returns (interactions, new_items).
    """
    new = (choose_new_items(interactions, ratio, seed) if new_items is None
           else np.unique(np.asarray(new_items, dtype=np.int64)))
    is_new = np.zeros(interactions.n_items, dtype=bool)
    is_new[new] = True
    moved_train = is_new[interactions.train[:, 1]]
    moved_valid = is_new[interactions.valid[:, 1]]
    test = np.concatenate([interactions.test, interactions.train[moved_train],
                           interactions.valid[moved_valid]])
    out = replace(interactions, train=interactions.train[~moved_train],
                  valid=interactions.valid[~moved_valid], test=test)
    return out, new


def make_sparse_split(interactions: Interactions, share: float = 0.2, seed: int = 0) -> Interactions:
    """Sparse setting: keep a seeded ``share`` of each user's training interactions (at least one per user
    with any), as random picks; validation and test stay as they are."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    train = interactions.train
    users = train[:, 0]
    order = np.lexsort((np.random.default_rng(seed).random(len(train)), users))  # by user, random within
    counts = np.bincount(users, minlength=interactions.n_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(train)) - starts[users[order]]
    keep = np.maximum(1, np.rint(share * counts).astype(np.int64))
    kept = order[rank < keep[users[order]]]
    return replace(interactions, train=train[np.sort(kept)])
