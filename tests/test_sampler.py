"""The BPR negative sampler: never a user's own training item, never an item without training interactions."""
import numpy as np

from dgmrec_core.trainer import NegativeSampler


def test_negatives_avoid_own_items_and_items_never_trained_on():
    rng = np.random.default_rng(0)
    n_users, n_items = 50, 40
    unseen = np.arange(30, 40)  # e.g. the new-item setting's items: no training interaction at all
    train = np.stack([rng.integers(0, n_users, 600), rng.integers(0, 30, 600)], axis=1)
    sampler = NegativeSampler(train, n_items, np.random.default_rng(1))
    users = rng.integers(0, n_users, 5000)
    neg = sampler.sample(users)
    assert not np.isin(neg, unseen).any()
    own = set(map(tuple, train.tolist()))
    assert not any((u, i) in own for u, i in zip(users.tolist(), neg.tolist()))
    assert len(np.unique(neg)) == 30  # every trained item can be a negative


def test_sampler_unchanged_when_every_item_has_training_interactions():
    """With no unseen items the draws are those of a uniform draw over all items (pinned outputs hold)."""
    rng = np.random.default_rng(0)
    train = np.stack([rng.integers(0, 20, 400), np.arange(400) % 25], axis=1)
    users = rng.integers(0, 20, 100)
    neg = NegativeSampler(train, 25, np.random.default_rng(3)).sample(users)
    first = np.random.default_rng(3).integers(0, 25, size=100)
    keys = set((train[:, 0] * 25 + train[:, 1]).tolist())
    clean = np.array([u * 25 + i not in keys for u, i in zip(users.tolist(), first.tolist())])
    assert np.array_equal(neg[clean], first[clean])
