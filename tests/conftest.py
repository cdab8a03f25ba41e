"""Shared fixtures: offline hub, seeded torch, and the real MovieLens data when present."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens100k-posters"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data/movielens100k-posters; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA} (../shared is absent)")
    return SHARED_DATA


def make_toy_dataset(n_users: int = 40, n_items: int = 60, dims: tuple[int, ...] = (16, 8), seed: int = 0,
                     missing_ratio: float = 2 / 3):
    """A toy catalog with a known answer: two item clusters, each user likes items of one cluster.

    Features are the cluster's centre plus noise in every modality; 2/3 of items miss modalities.
    """
    import numpy as np

    from dgmrec_core.data import Dataset, Modality
    from dgmrec_core.interactions import build_interactions
    from dgmrec_core.masking import make_missing_mask

    rng = np.random.default_rng(seed)
    item_cluster = np.arange(n_items) % 2
    user_cluster = np.arange(n_users) % 2
    users, items = [], []
    for u in range(n_users):
        liked = rng.choice(np.nonzero(item_cluster == user_cluster[u])[0], size=12, replace=False)
        users += [str(u)] * len(liked)
        items += [str(i) for i in liked]
    inter = build_interactions(np.array(users), np.array(items), seed=seed,
                               item_ids=[str(i) for i in range(n_items)])
    observed = make_missing_mask(n_items, len(dims), missing_ratio, seed)
    modalities = []
    for m, d in enumerate(dims):
        centres = rng.normal(size=(2, d)) * 3
        values = (centres[item_cluster] + rng.normal(size=(n_items, d))).astype(np.float32)
        modalities.append(Modality(["image", "text", "audio"][m], values, observed[:, m].copy()))
    return Dataset(inter, modalities, name="toy")


def make_new_item_toy_dataset():
    """The toy catalog with 30% of items missing a modality and a seeded 20% of its items new (their
    training and validation interactions moved to test): users' choices follow what the features show."""
    from dataclasses import replace

    from dgmrec_core.masking import make_new_item_split

    dataset = make_toy_dataset(missing_ratio=0.3)
    inter, new = make_new_item_split(dataset.interactions, 0.2, seed=1)
    return replace(dataset, interactions=inter, new_items=new)


def write_toy_files(folder, dataset) -> None:
    """``dataset`` as files a user would give: inter.csv (user_id, item_id, timestamp; items named i000..,
    in sorted-id order) and one <modality>.npy of features per modality."""
    import numpy as np

    inter = dataset.interactions
    pairs = np.concatenate([inter.train, inter.valid, inter.test])
    lines = ["user_id,item_id,timestamp"] + [f"u{u},i{i:03d},{t}" for t, (u, i) in enumerate(pairs)]
    (folder / "inter.csv").write_text("\n".join(lines) + "\n")
    for mod in dataset.modalities:
        np.save(folder / f"{mod.name}.npy", mod.values)
