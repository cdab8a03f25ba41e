"""The interactions of a build: an interactions file read over a catalog's items, or none (a catalog alone)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dgmrec_core.data import Interactions
from dgmrec_core.interactions import build_interactions, load_interactions
from retrieval.catalog import Catalog


def catalog_interactions(path: Path, catalog: Catalog, *, skip_bad: bool, seed: int) -> tuple[Interactions, int]:
    """Interactions over the catalog's items (catalog order); with ``skip_bad`` rows of unknown items dropped."""
    table = load_interactions(path)
    users, items, rows = table.users, table.items, table.rows
    times, splits = table.timestamps, table.splits
    dropped = 0
    if skip_bad:
        known = np.isin(items, np.asarray(catalog.item_ids, dtype=str))
        dropped = int((~known).sum())
        users, items, rows = users[known], items[known], rows[known]
        times = None if times is None else times[known]
        splits = None if splits is None else splits[known]
    inter = build_interactions(users, items, splits=splits, timestamps=times, seed=seed,
                               item_ids=catalog.item_ids, source=table.path, rows=rows)
    return inter, dropped


def no_users(catalog: Catalog) -> Interactions:
    """The interactions of a catalog given alone: its items, no users, empty splits."""
    empty = np.zeros((0, 2), dtype=np.int64)
    return Interactions(0, catalog.n_items, empty, empty.copy(), empty.copy(), [], list(catalog.item_ids))
