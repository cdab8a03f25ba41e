"""Interactions files, splits, feature matrices and dataset assembly (MMRec folder and own files)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dgmrec_core.errors import DataError
from dgmrec_core.features import impute, load_feature_matrix, observed_from_rows
from dgmrec_core.interactions import (UnseenInTrainingWarning, build_interactions, load_interactions,
                                      load_split_files, read_interactions, sorted_ids)
from dgmrec_core.masking import save_mask
from dgmrec_core.mmrec import load_dataset, load_mmrec


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def pairs(a: np.ndarray) -> set[tuple[int, int]]:
    return set(map(tuple, a.tolist()))


# ---------------------------------------------------------------- reading files

def test_load_csv_with_optional_columns(tmp_path):
    path = write(tmp_path / "r.csv", "user_id,item_id,rating,timestamp\nu1,i1,5,100\nu2, i2 ,3.5,50\n\n")
    table = load_interactions(path)
    assert table.users.tolist() == ["u1", "u2"]
    assert table.items.tolist() == ["i1", "i2"]
    assert table.ratings.tolist() == [5.0, 3.5]
    assert table.timestamps.tolist() == [100.0, 50.0]
    assert table.rows.tolist() == [2, 3]
    assert table.splits is None


@pytest.mark.parametrize("name, text", [
    ("r.tsv", "user_id\titem_id\n1\t2\n"),
    ("r.txt", "user_id\titem_id\n1\t2\n"),
    ("r.inter", "userID:token\titemID:token\tx_label\n1\t2\t0\n"),
    ("r.dat", "user_id;item_id\n1;2\n"),
])
def test_separator_sniffed(tmp_path, name, text):
    table = load_interactions(write(tmp_path / name, text))
    assert (table.users.tolist(), table.items.tolist()) == (["1"], ["2"])


def test_mmrec_split_column_and_iso_timestamps(tmp_path):
    path = write(tmp_path / "r.csv", "userID,itemID,x_label,timestamp\n"
                                     "a,x,0,2020-01-02\nb,y,test,2020-01-01T00:00:10\n")
    table = load_interactions(path)
    assert table.splits.tolist() == [0, 2]
    assert table.timestamps[0] - table.timestamps[1] == 86400 - 10


@pytest.mark.parametrize("text, problem, row", [
    ("", "file is empty", None),
    ("\nuser_id,item_id\n1,2\n", "starts with a blank line", None),
    ("user_id,item_id\n", "header only", None),
    ("user,item_id\n1,2\n", "missing column(s) user_id", None),
    ("user_id,rating\n1,2\n", "missing column(s) item_id", None),
    ("user_id,item_id\n1,2\n,3\n", "empty user id", 3),
    ("user_id,item_id\n1,2\n1,\n", "empty item id", 3),
    ("user_id,item_id\n1,2\n1\n", "expected at least 2 fields", 3),
    ("user_id,item_id,rating\n1,2,5\n1,3,good\n", "rating is not a number: 'good'", 3),
    ("user_id,item_id,timestamp\n1,2,5\n1,3,\n", "timestamp is neither", 3),
    ("user_id,item_id,split\n1,2,train\n1,3,later\n", "split is not", 3),
])
def test_bad_interactions_file(tmp_path, text, problem, row):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(DataError) as err:
        load_interactions(path)
    assert str(path) in str(err.value) and problem in str(err.value)
    assert err.value.row == row
    if row is not None:
        assert f"row {row}" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.csv: file not found"):
        load_interactions(tmp_path / "nope.csv")


# ---------------------------------------------------------------- dense ids and splits

def test_ids_sorted_numerically_or_lexicographically():
    assert sorted_ids(np.array(["10", "9", "2", "9"])).tolist() == ["2", "9", "10"]
    assert sorted_ids(np.array(["b", "10", "a"])).tolist() == ["10", "a", "b"]


def test_build_remaps_and_deduplicates():
    inter = build_interactions(["7", "7", "10", "7"], ["b", "a", "a", "b"], ratios=(1, 0, 0))
    assert inter.user_ids == ["7", "10"] and inter.item_ids == ["a", "b"]
    assert (inter.n_users, inter.n_items) == (2, 2)
    assert pairs(inter.train) == {(0, 1), (0, 0), (1, 0)}
    assert inter.train.dtype == np.int64 and inter.train.shape == (3, 2)


def test_split_ratios_per_user_by_time():
    # user a: 10 interactions, b: 3, c: 1; timestamps reverse the item order.
    users = ["a"] * 10 + ["b"] * 3 + ["c"]
    items = [f"i{k}" for k in range(10)] + ["i0", "i1", "i2", "i5"]
    stamps = -np.arange(len(users), dtype=float)
    inter = build_interactions(users, items, timestamps=stamps)
    per_user = [np.bincount(s[:, 0], minlength=3).tolist() for s in (inter.train, inter.valid, inter.test)]
    assert per_user == [[8, 2, 1], [1, 0, 0], [1, 1, 0]]  # floor(.8n), floor(.9n)-floor(.8n), rest
    a_test = inter.test[inter.test[:, 0] == 0, 1]
    assert [inter.item_ids[i] for i in a_test] == ["i0"]  # the latest interaction of user a


def test_split_is_seeded_and_keeps_every_pair():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 50, 3000).astype(str)
    items = rng.integers(0, 200, 3000).astype(str)
    a = build_interactions(users, items, seed=1)
    b = build_interactions(users, items, seed=1)
    c = build_interactions(users, items, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip((a.train, a.valid, a.test), (b.train, b.valid, b.test)))
    assert not np.array_equal(a.test, c.test)
    every = np.concatenate([a.train, a.valid, a.test])
    assert len(pairs(every)) == len(every) == len(set(zip(users, items)))
    assert abs(len(a.train) / len(every) - 0.8) < 0.03
    assert set(np.unique(a.train[:, 0])) == set(range(a.n_users))


def test_item_ids_fix_the_item_order():
    inter = build_interactions(["u", "u"], ["c", "a"], item_ids=["c", "b", "a"], ratios=(1, 0, 0))
    assert inter.n_items == 3 and pairs(inter.train) == {(0, 0), (0, 2)}
    with pytest.raises(DataError, match="item id 'z' is not in the given item list"):
        build_interactions(["u"], ["z"], item_ids=["a"], source="f.csv")


def test_given_splits_keep_the_training_copy_of_a_duplicate():
    inter = build_interactions(["u", "u", "u"], ["a", "a", "b"], splits=[2, 0, 1], item_ids=["a", "b"])
    assert pairs(inter.train) == {(0, 0)} and pairs(inter.valid) == {(0, 1)} and len(inter.test) == 0


def test_split_files_and_their_errors(tmp_path):
    train = write(tmp_path / "train.csv", "user_id,item_id\nu1,a\nu2,b\n")
    valid = write(tmp_path / "valid.csv", "user_id,item_id\nu1,b\n")
    test = write(tmp_path / "test.csv", "user_id,item_id\nu2,a\n")
    inter = load_split_files(train, valid, test)
    assert (len(inter.train), len(inter.valid), len(inter.test)) == (2, 1, 1)

    unseen_user = write(tmp_path / "test_u.csv", "user_id,item_id\nu2,a\nu9,a\nu9,b\n")
    with pytest.warns(UnseenInTrainingWarning) as caught:
        inter = load_split_files(train, valid, unseen_user)
    message = str(caught[0].message)
    assert str(unseen_user) in message and "dropped 2 validation/test rows (2 test): 1 user(s) that never occur" in message
    assert (len(inter.test), inter.n_users, inter.dropped_unseen) == (1, 2, 2)

    unseen_item = write(tmp_path / "valid_i.csv", "user_id,item_id\nu1,zz\nu2,a\n")
    with pytest.warns(UnseenInTrainingWarning, match=r"dropped 1 validation/test rows \(1 valid\)"):
        inter = load_split_files(train, unseen_item, test)
    assert pairs(inter.valid) == {(1, 0)} and inter.n_items == 2

    with pytest.raises(DataError, match=r"valid_i.csv, row 2: item id 'zz' is not in the given item list"):
        load_split_files(train, unseen_item, test, item_ids=["a", "b"])


def test_given_item_list_keeps_known_items_without_training_rows():
    """MMRec-style data: an item of the feature rows with only a test row is ranked, not dropped; an unseen
    user's rows are dropped (the reference code drops them too)."""
    with pytest.warns(UnseenInTrainingWarning, match="1 user"):
        inter = build_interactions(["u", "u", "v", "w"], ["a", "c", "b", "a"], splits=[0, 2, 0, 1],
                                   item_ids=["a", "b", "c"])
    assert pairs(inter.test) == {(0, 2)} and len(inter.valid) == 0 and inter.dropped_unseen == 1


def test_empty_training_split(tmp_path):
    path = write(tmp_path / "r.csv", "user_id,item_id,x_label\nu,a,1\nu,b,2\n")
    with pytest.raises(DataError, match=r"r.csv: the training split is empty"):
        read_interactions(path)
    empty = write(tmp_path / "train.csv", "user_id,item_id\n")
    with pytest.raises(DataError, match=r"train.csv: no interactions"):
        load_split_files(empty, path, path)


# ---------------------------------------------------------------- features

def test_feature_matrix_loads_as_float32(tmp_path):
    path = tmp_path / "f.npy"
    np.save(path, np.arange(6, dtype=np.float64).reshape(3, 2))
    values = load_feature_matrix(path, 3, name="image")
    assert values.dtype == np.float32 and values.shape == (3, 2)


@pytest.mark.parametrize("array, problem", [
    (np.zeros((4, 2)), "image features have 4 rows but there are 3 items"),
    (np.zeros(3), "must be a 2-D array"),
    (np.array([[0, 1], [2, np.nan], [np.inf, 0]]), "row 1: image features contain NaN or inf in 2 row(s)"),
    (np.array([["a", "b"]] * 3), "must be numeric"),
])
def test_bad_feature_matrix(tmp_path, array, problem):
    path = tmp_path / "f.npy"
    np.save(path, array)
    with pytest.raises(DataError) as err:
        load_feature_matrix(path, 3, name="image")
    assert str(err.value).startswith(str(path)) and problem in str(err.value)


def test_unreadable_or_missing_feature_file(tmp_path):
    path = write(tmp_path / "f.npy", "not numpy")
    with pytest.raises(DataError, match="f.npy: cannot read text features"):
        load_feature_matrix(path, 3, name="text")
    with pytest.raises(DataError, match="g.npy: text feature file not found"):
        load_feature_matrix(tmp_path / "g.npy", 3, name="text")


def test_observed_and_impute():
    values = np.array([[1, 2], [0, 0], [3, 4]], dtype=np.float32)
    observed = observed_from_rows(values)
    assert observed.tolist() == [True, False, True]
    assert impute(values, observed, "mean")[1].tolist() == [2, 3]
    assert impute(values, observed, "zero")[1].tolist() == [0, 0]
    assert impute(values, np.zeros(3, bool))[0].tolist() == [0, 0]
    assert values[1].tolist() == [0, 0]  # input untouched
    with pytest.raises(ValueError):
        impute(values, observed, "median")


# ---------------------------------------------------------------- datasets

def make_mmrec_folder(folder: Path) -> Path:
    """6 users, 5 items; item 4 has no image (all-zero row); mask: item 0 loses text, 1 both."""
    folder.mkdir()
    rows = [(u, i, 0) for u in range(6) for i in range(5) if (u + i) % 2 == 0]
    rows += [(0, 1, 1), (1, 2, 2), (2, 1, 2)]
    write(folder / "toy.inter", "userID\titemID\tx_label\n" + "".join(f"{u}\t{i}\t{s}\n" for u, i, s in rows))
    image = np.arange(15, dtype=np.float32).reshape(5, 3) + 1
    image[4] = 0
    np.save(folder / "image_feat.npy", image)
    np.save(folder / "text_feat.npy", np.ones((5, 2), dtype=np.float32))
    np.save(folder / "missing_items_0.5.npy", {"t": np.array([0]), "v": np.array([], dtype=np.int64),
                                                "all": np.array([1])}, allow_pickle=True)
    np.save(folder / "new_items.npy", np.array([2]))
    return folder


def test_load_mmrec_folder(tmp_path):
    folder = make_mmrec_folder(tmp_path / "toy")
    ds = load_mmrec(folder, missing_ratio="0.5")
    assert (ds.name, ds.n_users, ds.n_items) == ("toy", 6, 5)
    assert [m.name for m in ds.modalities] == ["image", "text"]
    assert ds.observed.tolist() == [[True, False], [False, False], [True, True], [True, True], [False, True]]
    assert ds.modalities[1].values[0].tolist() == [1, 1]  # masked rows keep their real values
    assert (len(ds.interactions.valid), len(ds.interactions.test)) == (1, 2)

    ds = load_mmrec(folder, missing_ratio=None, new_items=True)
    assert ds.new_items.tolist() == [2] and ds.observed[:, 1].all()
    inter = ds.interactions
    assert 2 not in inter.train[:, 1] and 2 not in inter.valid[:, 1] and (inter.test[:, 1] == 2).sum() == 4


def test_load_mmrec_errors(tmp_path):
    folder = make_mmrec_folder(tmp_path / "toy")
    with pytest.raises(DataError, match="missing_items_0.666.npy: mask file not found"):
        load_mmrec(folder)
    np.save(folder / "text_feat.npy", np.ones((4, 2), dtype=np.float32))
    with pytest.raises(DataError, match="text_feat.npy: text features have 4 rows but there are 5 items"):
        load_mmrec(folder, missing_ratio=None)
    write(folder / "other.inter", "userID\titemID\tx_label\n")
    with pytest.raises(DataError, match="expected one <name>.inter file, found 2"):
        load_mmrec(folder)


def test_load_dataset_from_own_files(tmp_path):
    inter = write(tmp_path / "r.csv", "user_id,item_id\n" + "".join(
        f"u{u},{i}\n" for u in range(8) for i in range(1, 11) if (u * i) % 3 != 1))
    np.save(tmp_path / "img.npy", np.eye(10, 4, dtype=np.float32) + 0.5)
    txt = np.ones((10, 3), dtype=np.float32)
    txt[9] = 0
    np.save(tmp_path / "txt.npy", txt)
    observed = np.ones((10, 2), dtype=bool)
    observed[0, 0] = False
    save_mask(tmp_path / "mask.npz", observed[:, ::-1], ["text", "image"])
    ds = load_dataset(inter, {"image": tmp_path / "img.npy", "text": tmp_path / "txt.npy"},
                      mask_path=tmp_path / "mask.npz", seed=3, new_item_ratio=0.2)
    assert ds.interactions.item_ids == [str(i) for i in range(1, 11)]
    assert ds.observed[0].tolist() == [False, True] and ds.observed[9].tolist() == [True, False]
    assert len(ds.new_items) > 0 and not np.isin(ds.interactions.train[:, 1], ds.new_items).any()

    np.save(tmp_path / "short.npy", np.ones((9, 3), dtype=np.float32))
    with pytest.raises(DataError, match="short.npy: text features have 9 rows but there are 10 items"):
        load_dataset(inter, {"text": tmp_path / "short.npy"})
    with pytest.raises(DataError, match="mask.npz: mask has no column for modality 'audio'"):
        load_dataset(inter, {"audio": tmp_path / "txt.npy"}, mask_path=tmp_path / "mask.npz")


# ---------------------------------------------------------------- the real MovieLens-100K data

@pytest.mark.shared
def test_real_mmrec_folder(shared_data):
    ds = load_mmrec(shared_data / "mmrec")
    inter = ds.interactions
    assert (ds.n_users, ds.n_items) == (943, 1682)
    assert (len(inter.train), len(inter.valid), len(inter.test)) == (79_619, 9_942, 10_439)
    image, text = ds.modalities
    assert (image.dim, text.dim) == (1280, 384)
    assert not image.observed[[329, 386, 1666]].any()  # posterless movies, two of them not masked
    lost_image_only = (~ds.observed[:, 0] & ds.observed[:, 1]).sum()
    assert lost_image_only >= 280 and (~ds.observed).all(axis=1).sum() >= 559


@pytest.mark.shared
def test_real_ratings_split_by_time_matches_mmrec_counts(shared_data):
    inter = read_interactions(shared_data / "ratings.tsv")
    assert (inter.n_users, inter.n_items) == (943, 1682)
    assert inter.item_ids[:2] == ["1", "2"]
    assert (len(inter.train), len(inter.valid), len(inter.test)) == (79_619, 9_942, 10_439)


def test_impute_in_chunks_into_a_given_array(monkeypatch):
    from dgmrec_core import features
    rng = np.random.default_rng(0)
    values = rng.normal(size=(103, 5)).astype(np.float32)
    observed = rng.random(103) < 0.4
    whole = impute(values, observed, "mean")
    monkeypatch.setattr(features, "IMPUTE_CHUNK", 10)
    out = np.full((103, 5), np.nan, dtype=np.float32)
    assert impute(values, observed, "mean", out=out) is out
    np.testing.assert_allclose(out, whole, atol=1e-6)
    np.testing.assert_array_equal(out[observed], values[observed])
    np.testing.assert_allclose(out[~observed][0], values[observed].mean(0), atol=1e-6)
