"""In-memory data model: interactions with dense ids, splits, per-modality features and masks."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Interactions:
    """User-item interactions with dense int ids and a train/valid/test split.

    Each split is an int64 array of shape (n, 2) holding (user, item) rows.
    ``user_ids[u]`` / ``item_ids[i]`` give the external string id of dense index u / i.
    ``dropped_unseen`` counts the valid/test rows dropped on loading because their user (or item) never
    occurs in the training split.
    """

    n_users: int
    n_items: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    user_ids: list[str] = field(default_factory=list)
    item_ids: list[str] = field(default_factory=list)
    dropped_unseen: int = 0


@dataclass
class Modality:
    """Raw features of one modality: ``values`` float32 (n_items, d); ``observed`` bool (n_items,)."""

    name: str
    values: np.ndarray
    observed: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])


@dataclass
class Dataset:
    """Everything training needs: interactions plus any number of modalities.

    ``new_items`` (optional) lists items held out of training for the new-item setting.
    """

    interactions: Interactions
    modalities: list[Modality]
    new_items: np.ndarray | None = None
    name: str = "dataset"

    @property
    def n_users(self) -> int:
        return self.interactions.n_users

    @property
    def n_items(self) -> int:
        return self.interactions.n_items

    @property
    def observed(self) -> np.ndarray:
        """bool (n_items, n_modalities): which modality each item has."""
        return np.stack([m.observed for m in self.modalities], axis=1)
