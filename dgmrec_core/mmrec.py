"""Assemble a ``Dataset`` from MMRec's folder layout or from the user's own interactions + feature files.

``Modality.values`` always holds the real feature rows, also for items whose modality is masked by a
missing-modality protocol (the evaluation of generation needs them); ``Modality.observed`` is False for
masked rows and for all-zero rows (naturally missing). Consumers must never read ``values`` where
``observed`` is False: the model imputes those rows (:func:`dgmrec_core.features.impute`) first.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .data import Dataset, Interactions, Modality
from .errors import DataError
from .features import load_feature_matrix, observed_from_rows
from .interactions import load_split_files, read_interactions
from .masking import load_mask, load_mmrec_mask, load_new_items, make_new_item_split

MMREC_MODALITIES = {"image": "image_feat.npy", "text": "text_feat.npy", "audio": "audio_feat.npy"}


def _inter_file(folder: Path, name: str | None) -> Path:
    if name is not None:
        return folder / f"{name}.inter"
    found = sorted(p for p in folder.glob("*.inter") if not p.stem.endswith("_del"))
    if len(found) != 1:
        raise DataError(folder, f"expected one <name>.inter file, found {len(found)}"
                                f"{': ' + ', '.join(p.name for p in found) if found else ''}; pass name=")
    return found[0]


def _apply_mask(modalities: list[Modality], observed: np.ndarray, names: Sequence[str],
                source: str | Path) -> None:
    """AND a mask's columns into the modalities of the same name."""
    if observed.shape[0] != len(modalities[0].observed):
        raise DataError(source, f"mask has {observed.shape[0]} rows but there are "
                                f"{len(modalities[0].observed)} items")
    for modality in modalities:
        if modality.name not in names:
            raise DataError(source, f"mask has no column for modality '{modality.name}' "
                                    f"(it has {list(names)})")
        modality.observed &= observed[:, list(names).index(modality.name)]


def load_mmrec(folder: str | Path, *, name: str | None = None, missing_ratio: str | float | None = "0.666",
               new_items: bool = False) -> Dataset:
    """Load an MMRec data folder: ``<name>.inter`` (userID, itemID, x_label), ``image_feat.npy``,
    ``text_feat.npy`` (and ``audio_feat.npy`` when present), ``missing_items_<ratio>.npy`` unless
    ``missing_ratio`` is None, and ``new_items.npy`` when ``new_items`` (see :func:`make_new_item_split`).

    IDs in the folder are dense indices and stay so. Masked and all-zero rows are unobserved; their
    ``values`` stay the real rows (module docstring).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "MMRec data folder not found")
    inter_path = _inter_file(folder, name)
    files = {m: folder / f for m, f in MMREC_MODALITIES.items() if (folder / f).exists()}
    if not {"image", "text"} & set(files):
        raise DataError(folder, "no image_feat.npy or text_feat.npy")
    first = next(iter(files.values()))
    try:
        n_items = int(np.load(first, mmap_mode="r", allow_pickle=False).shape[0])
    except (OSError, ValueError, IndexError) as exc:
        raise DataError(first, f"cannot read the feature matrix: {exc}") from exc
    modalities = []
    for modality, path in files.items():
        values = load_feature_matrix(path, n_items, name=modality)
        modalities.append(Modality(modality, values, observed_from_rows(values)))
    interactions = read_interactions(inter_path, item_ids=[str(i) for i in range(n_items)])
    if missing_ratio is not None:
        mask_path = folder / f"missing_items_{missing_ratio}.npy"
        names = [m.name for m in modalities]
        _apply_mask(modalities, load_mmrec_mask(mask_path, n_items, names), names, mask_path)
    new = None
    if new_items:
        new = load_new_items(folder / "new_items.npy", n_items)
        interactions, new = make_new_item_split(interactions, new_items=new)
    return Dataset(interactions, modalities, new_items=new, name=inter_path.stem)


def load_dataset(interactions: str | Path | Sequence[str | Path], features: Mapping[str, str | Path], *,
                 mask_path: str | Path | None = None, item_ids: Sequence[str] | None = None,
                 ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 2024,
                 new_item_ratio: float = 0.0, sep: str | None = None, name: str = "dataset") -> Dataset:
    """Load the user's own data: an interactions CSV/TSV (or three split files) and one ``.npy`` per modality.

    Feature row i belongs to item ``item_ids[i]``; without ``item_ids`` the items are those of the
    interactions in :func:`dgmrec_core.interactions.sorted_ids` order. ``mask_path`` is an ``.npz`` of
    :func:`dgmrec_core.masking.save_mask` (columns by modality name) or an MMRec ``.npy`` dict.
    ``new_item_ratio`` > 0 applies the new-item setting. All-zero feature rows are unobserved.
    """
    if isinstance(interactions, (str, Path)):
        inter: Interactions = read_interactions(interactions, ratios=ratios, seed=seed,
                                                item_ids=item_ids, sep=sep)
    elif len(interactions) == 3:
        inter = load_split_files(*interactions, item_ids=item_ids, sep=sep)
    else:
        raise ValueError("interactions must be one file or (train, valid, test) files")
    if not features:
        raise ValueError("at least one modality's features are needed")
    modalities = []
    for modality, path in features.items():
        values = load_feature_matrix(path, inter.n_items, name=modality)
        modalities.append(Modality(modality, values, observed_from_rows(values)))
    if mask_path is not None:
        names = [m.name for m in modalities]
        if Path(mask_path).suffix == ".npz":
            observed, names = load_mask(mask_path)
        else:
            observed = load_mmrec_mask(mask_path, inter.n_items, names)
        _apply_mask(modalities, observed, names, mask_path)
    new = None
    if new_item_ratio > 0:
        inter, new = make_new_item_split(inter, new_item_ratio, seed)
    return Dataset(inter, modalities, new_items=new, name=name)
