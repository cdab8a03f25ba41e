"""Missing-modality masks (the paper's protocol for M modalities), their formats, and new-item splits."""
from __future__ import annotations

import numpy as np
import pytest

from dgmrec_core.data import Interactions
from dgmrec_core.errors import DataError
from dgmrec_core.masking import (choose_new_items, cold_warm_strata, load_mask, load_mmrec_mask,
                                 load_new_items, make_missing_mask, make_new_item_split, make_sparse_split,
                                 mask_from_mmrec_dict, mask_to_mmrec_dict, save_mask)


def lost_counts(observed: np.ndarray) -> tuple[int, ...]:
    """(lost every modality, lost only modality 0, lost only modality 1, ...)."""
    lost = ~observed
    only = lost & (lost.sum(axis=1) == 1)[:, None]
    return (int(lost.all(axis=1).sum()), *only.sum(axis=0).tolist())


def test_protocol_counts_two_modalities():
    observed = make_missing_mask(1682, ratio=0.666, seed=0)
    assert observed.shape == (1682, 2) and observed.dtype == bool
    assert lost_counts(observed) == (560, 280, 280)  # 1120 masked: half both, a quarter each
    assert lost_counts(make_missing_mask(1682, seed=0)) == (560, 280, 281)  # 1121 = floor(2/3 * 1682)


def test_every_masked_item_is_in_exactly_one_group():
    observed = make_missing_mask(120, n_modalities=3, ratio=0.5, seed=4)
    n_lost = (~observed).sum(axis=1)
    assert set(n_lost.tolist()) == {0, 1, 3}  # never two of three
    assert lost_counts(observed) == (30, 10, 10, 10)


def test_strata_reproduce_the_ml100k_mask_counts():
    # The paper's script masks 2/3 of each of new-cold, new-warm, old-cold, old-warm: on ML-100K
    # these strata hold 235, 101, 942 and 404 items and the shipped mask has v 280, t 281, all 559.
    strata = np.repeat([2, 3, 0, 1], [235, 101, 942, 404])
    observed = make_missing_mask(1682, ratio=2 / 3, seed=0, strata=strata)
    assert lost_counts(observed) == (559, 280, 281)
    for s in range(4):
        assert (~observed[strata == s]).any(axis=1).sum() == int(2 / 3 * (strata == s).sum())


def test_seeded_reproducibility():
    a = make_missing_mask(500, seed=7)
    assert np.array_equal(a, make_missing_mask(500, seed=7))
    assert not np.array_equal(a, make_missing_mask(500, seed=8))
    assert make_missing_mask(10, ratio=0).all()
    assert lost_counts(make_missing_mask(8, ratio=1)) == (4, 2, 2)


def test_save_load_roundtrip(tmp_path):
    observed = make_missing_mask(50, n_modalities=3, seed=1)
    path = tmp_path / "sub" / "mask.npz"
    save_mask(path, observed, ["image", "text", "audio"])
    loaded, names = load_mask(path)
    assert np.array_equal(loaded, observed) and names == ["image", "text", "audio"]
    assert [p.name for p in path.parent.iterdir()] == ["mask.npz"]  # no temp file left
    (tmp_path / "junk.npz").write_text("junk")
    with pytest.raises(DataError, match="junk.npz: cannot read mask"):
        load_mask(tmp_path / "junk.npz")


def test_mmrec_dict_roundtrip_and_key_meaning(tmp_path):
    observed = make_missing_mask(200, seed=2)
    d = mask_to_mmrec_dict(observed)
    assert set(d) == {"v", "t", "all"}
    assert not observed[d["v"], 0].any() and observed[d["v"], 1].all()  # 'v' lost the image only
    assert observed[d["t"], 0].all() and not observed[d["t"], 1].any()
    assert np.array_equal(mask_from_mmrec_dict(d, 200), observed)
    path = tmp_path / "missing_items_0.666.npy"
    np.save(path, d, allow_pickle=True)
    assert np.array_equal(load_mmrec_mask(path, 200), observed)

    three = make_missing_mask(60, n_modalities=3, seed=0)
    names = ("image", "text", "audio")
    assert np.array_equal(mask_from_mmrec_dict(mask_to_mmrec_dict(three, names), 60, names), three)


def test_bad_mmrec_dicts(tmp_path):
    with pytest.raises(DataError, match=r"m.npy: unknown mask key\(s\) \['x'\]"):
        mask_from_mmrec_dict({"x": [1]}, 5, source="m.npy")
    with pytest.raises(DataError, match=r"m.npy, field 'all': mask key 'all' must hold item indices in 0..4"):
        mask_from_mmrec_dict({"all": [5]}, 5, source="m.npy")
    path = tmp_path / "list.npy"
    np.save(path, np.arange(3))
    with pytest.raises(DataError, match="list.npy: MMRec mask must hold a dict"):
        load_mmrec_mask(path, 5)


def toy_interactions() -> Interactions:
    """10 users x 20 items; item i has i + 1 training users (up to 10), some valid/test pairs."""
    train = np.array([(u, i) for i in range(20) for u in range(min(i + 1, 10))], dtype=np.int64)
    valid = np.array([(u, 19 - u) for u in range(5)] + [(9, 3)], dtype=np.int64)
    test = np.array([(u, 2 * u) for u in range(10)], dtype=np.int64)
    return Interactions(10, 20, train, valid, test)


def test_new_item_split_moves_interactions_to_test():
    inter = toy_interactions()
    out, new = make_new_item_split(inter, ratio=0.2, seed=3)
    assert len(new) == 3  # floor(0.2 * 14 cold) + floor(0.2 * 6 warm)
    assert not np.isin(out.train[:, 1], new).any() and not np.isin(out.valid[:, 1], new).any()
    every = lambda i: {tuple(p) for s in (i.train, i.valid, i.test) for p in s.tolist()}  # noqa: E731
    assert every(out) == every(inter)
    moved = {tuple(p) for s in (inter.train, inter.valid) for p in s.tolist() if p[1] in new}
    assert moved <= {tuple(p) for p in out.test.tolist()}
    same, new2 = make_new_item_split(inter, ratio=0.2, seed=3)
    assert np.array_equal(new, new2) and np.array_equal(out.train, same.train)


def test_new_items_are_stratified_and_can_be_given(tmp_path):
    inter = toy_interactions()
    strata = cold_warm_strata(inter)
    assert strata[:14].tolist() == [0] * 14 and strata[14:].tolist() == [1] * 6
    new = choose_new_items(inter, 0.5, seed=0)
    assert (new < 14).sum() == 7 and (new >= 14).sum() == 3
    path = tmp_path / "new_items.npy"
    np.save(path, np.array([5, 1, 5]))
    given = load_new_items(path, 20)
    assert given.tolist() == [1, 5]
    out, new = make_new_item_split(inter, new_items=given)
    assert new.tolist() == [1, 5] and not np.isin(out.train[:, 1], given).any()
    np.save(path, np.array([20]))
    with pytest.raises(DataError, match="new_items.npy: new items must be integer item indices in 0..19"):
        load_new_items(path, 20)


@pytest.mark.shared
def test_real_ml100k_mask_and_new_items(shared_data):
    from dgmrec_core.interactions import read_interactions

    folder = shared_data / "mmrec"
    shipped = load_mmrec_mask(folder / "missing_items_0.666.npy", 1682)
    assert lost_counts(shipped) == (559, 280, 281)  # all, v (image), t (text)
    new = load_new_items(folder / "new_items.npy", 1682)
    inter = read_interactions(folder / "ml100k.inter", item_ids=[str(i) for i in range(1682)])
    ours = make_missing_mask(1682, ratio=2 / 3, seed=0, strata=cold_warm_strata(inter, new))
    assert lost_counts(ours) == lost_counts(shipped)
    out, _ = make_new_item_split(inter, new_items=new)
    assert not np.isin(out.train[:, 1], new).any()
    assert len(out.train) + len(out.valid) + len(out.test) == 100_000


def test_sparse_split_keeps_a_seeded_share_of_each_users_training_items():
    rng = np.random.default_rng(0)
    counts = np.array([1, 2, 5, 10, 23])
    train = np.array([(u, i) for u, c in enumerate(counts) for i in rng.permutation(40)[:c]], dtype=np.int64)
    inter = Interactions(5, 40, train, train[:3], train[3:6])
    out = make_sparse_split(inter, 0.2, seed=1)
    assert np.bincount(out.train[:, 0], minlength=5).tolist() == [1, 1, 1, 2, 5]  # round(0.2 n), at least 1
    assert {tuple(p) for p in out.train.tolist()} <= {tuple(p) for p in train.tolist()}
    assert np.array_equal(out.valid, inter.valid) and np.array_equal(out.test, inter.test)
    assert np.array_equal(make_sparse_split(inter, 0.2, seed=1).train, out.train)
    assert not np.array_equal(make_sparse_split(inter, 0.2, seed=2).train, out.train)
