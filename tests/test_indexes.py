"""FAISS index layer: VectorIndex (exact / IVF / HNSW) and the on-disk IndexBundle."""
from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from dgmrec_core.atomic import sha256_file
from dgmrec_core.errors import DataError
from retrieval.index import storage, vectors
from retrieval.index.bundle import IndexBundle
from retrieval.index.storage import IndexMismatch
from retrieval.index.vectors import VectorIndex, normalise

DIMS = {"image": 16, "text": 12}
FUSED_DIM = 8
ENCODER = {"model": "ViT-B-32", "pretrained": None}


def clustered(n: int, d: int, *, centres: int = 200, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``centres`` random centres, each cluster spread along its own 8 directions."""
    rng = np.random.default_rng(seed)
    c = normalise(rng.standard_normal((centres, d)))
    basis = rng.standard_normal((centres, 8, d)).astype(np.float32) / np.sqrt(8 * d)
    lab = rng.integers(0, centres, n)
    x = c[lab] + np.einsum("nr,nrd->nd", rng.standard_normal((n, 8)).astype(np.float32), basis[lab])
    x += 0.1 * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    return normalise(x)


def payload(n: int, *, start: int = 0, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "item_ids": [f"item{start + i}" for i in range(n)],
        "modality_vectors": {m: rng.standard_normal((n, d)).astype(np.float32) for m, d in DIMS.items()},
        "generated": {m: rng.random(n) < 0.3 for m in DIMS},
        "fused": rng.standard_normal((n, FUSED_DIM)).astype(np.float32),
    }


def build(folder, n: int = 300, *, kind: str = "flat", seed: int = 0, **kw) -> tuple[IndexBundle, dict]:
    data = payload(n, seed=seed)
    args = dict(model_fingerprint="model-a", encoder_fingerprint=ENCODER, kind=kind)
    args.update(kw)
    return IndexBundle.build(folder, **data, **args), data


def brute_force(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(normalise(q) @ normalise(x).T), axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth)]))


def to_format_1(folder) -> None:
    """Turn a bundle of one segment into one written before segments (format 1): item ids and generated flags
    inside meta.json, no ids file."""
    meta = json.loads((folder / "meta.json").read_text())
    assert meta.pop("segments") == [meta["count"]]
    ids = json.loads((folder / "ids.json").read_text())
    (folder / "ids.json").unlink()
    meta["checksums"].pop("ids.json")
    meta.update(format_version=1, item_ids=ids["item_ids"],
                generated={m: [c == "1" for c in flags] for m, flags in ids["generated"].items()})
    (folder / "meta.json").write_text(json.dumps(meta))


def record(folder, *names) -> None:
    """Record the files ``names`` as they are now in meta.json's checksums (a test that replaces a file on
    purpose, past the size check)."""
    meta = json.loads((folder / "meta.json").read_text())
    for name in names:
        meta["checksums"][name] = {"size": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
    (folder / "meta.json").write_text(json.dumps(meta))


def _leftovers(parent) -> list[str]:
    """Temp folders and links left beside bundles (versions, links and lock files are expected)."""
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name or ".link-" in p.name)


# ---------------------------------------------------------------------- VectorIndex
def test_normalise_keeps_zero_rows_zero():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    out = normalise(x)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
    assert out.dtype == np.float32 and x[0, 0] == 3.0  # input untouched
    scores, rows = VectorIndex.build(x).search(np.zeros(2), 2)
    np.testing.assert_array_equal(scores, [[0.0, 0.0]])


def test_exact_index_finds_exact_nearest_neighbour():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, 32)) * rng.uniform(0.1, 10, (2000, 1))  # norms must not matter
    q = x[:50] + 0.05 * rng.standard_normal((50, 32)) * np.linalg.norm(x[:50], axis=1, keepdims=True)
    index = VectorIndex.build(x, kind="auto")
    assert index.kind == "flat" and index.ntotal == 2000 and index.dim == 32
    scores, rows = index.search(q, 5)
    np.testing.assert_array_equal(rows[:, 0], np.arange(50))
    np.testing.assert_array_equal(rows, brute_force(x, q, 5))
    assert rows.dtype == np.int64 and scores.dtype == np.float32 and scores.shape == (50, 5)
    single_scores, single_rows = index.search(q[3], 5)  # a 1-D query is one query
    np.testing.assert_array_equal(single_rows, rows[3:4])


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall_vs_exact(kind):
    x = clustered(20_020, 64, seed=2)
    base, queries = x[:20_000], x[20_000:]
    truth = VectorIndex.build(base, kind="flat").search(queries, 10)[1]
    approx = VectorIndex.build(base, kind=kind)
    assert approx.kind == kind
    assert recall(approx.search(queries, 10)[1], truth) >= 0.9


def test_ivf_defaults_and_search_params():
    x = clustered(4000, 16, seed=3)
    index = VectorIndex.build(x, kind="ivf", seed=7)
    assert index.params["nlist"] == 4000 // 39  # ~4 sqrt(n), at most n/39
    assert index.params["nprobe"] == min(vectors.DEFAULT_NPROBE, index.params["nlist"])
    index.set_search_params(nprobe=5)
    assert index.params["nprobe"] == 5
    again = VectorIndex.build(x, kind="ivf", seed=7)  # seeded training: same partition, same answers
    again.set_search_params(nprobe=5)
    np.testing.assert_array_equal(index.search(x[:20], 10)[1], again.search(x[:20], 10)[1])


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_vector_index_save_load_same_results(tmp_path, kind):
    x = clustered(3000, 24, seed=4)
    index = VectorIndex.build(x, kind=kind, nprobe=3, ef_search=20)
    index.save(tmp_path / "v.faiss")
    loaded = VectorIndex.load(tmp_path / "v.faiss")
    assert (loaded.kind, loaded.ntotal, loaded.params) == (kind, 3000, index.params)
    for a, b in zip(index.search(x[:30], 10), loaded.search(x[:30], 10)):
        np.testing.assert_array_equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["v.faiss"]  # no temp file left


def test_vector_index_add_returns_new_rows_and_k_is_clamped():
    index = VectorIndex.build(np.eye(4, 8), kind="flat")
    rows = index.add(np.eye(8)[4:6])
    np.testing.assert_array_equal(rows, [4, 5])
    scores, found = index.search(np.eye(8)[5], 100)
    assert found.shape == (1, 6) and found[0, 0] == 5
    with pytest.raises(DataError, match="dimension 3"):
        index.add(np.ones((1, 3)))
    with pytest.raises(DataError, match="NaN"):
        index.search(np.full(8, np.nan), 1)


def test_vector_index_load_refuses_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError, match="missing"):
        VectorIndex.load(tmp_path / "absent.faiss")
    (tmp_path / "bad.faiss").write_bytes(b"garbage")
    with pytest.raises(DataError, match="bad.faiss"):
        VectorIndex.load(tmp_path / "bad.faiss")


# ---------------------------------------------------------------------- IndexBundle
def test_bundle_build_load_round_trip(tmp_path):
    folder = tmp_path / "indexes" / "shop"
    bundle, data = build(folder, extra={"note": "demo", "pref": np.arange(3.0)})
    assert sorted(p.name for p in folder.iterdir()) == [
        "extra_pref.npy", "features_image.npy", "features_text.npy", "fused.faiss", "ids.json", "image.faiss",
        "items.npy", "meta.json", "meta.json.sha256", "text.faiss"]
    assert folder.is_symlink() and folder.resolve().parent == folder.parent
    assert _leftovers(folder.parent) == []  # no temp folders left
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["modalities"] == ["image", "text"] and meta["dims"] == DIMS
    assert meta["index_kinds"] == {"image": "flat", "text": "flat", "fused": "flat"}
    assert meta["model_fingerprint"] == "model-a" and meta["encoder_fingerprint"] == ENCODER
    assert meta["format_version"] == storage.FORMAT_VERSION and meta["created"] and meta["extra"] == {"note": "demo"}

    loaded = IndexBundle.load(folder, expect_model_fingerprint="model-a", expect_encoder_fingerprint=ENCODER)
    assert loaded.item_ids == data["item_ids"] and len(loaded) == 300
    assert loaded.row_of("item17") == 17
    for m in DIMS:
        np.testing.assert_array_equal(loaded.generated[m], data["generated"][m])
        np.testing.assert_array_equal(loaded.features(m), data["modality_vectors"][m])
    np.testing.assert_array_equal(loaded.fused_items(), data["fused"])
    np.testing.assert_array_equal(loaded.extra_array("pref"), np.arange(3.0))
    for m in [*DIMS, "fused"]:
        q = np.random.default_rng(5).standard_normal((7, loaded.indexes[m].dim))
        a, b = bundle.search(m, q, 10), loaded.search(m, q, 10)
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.generated, b.generated)


def test_search_reports_generated_flags(tmp_path):
    bundle, data = build(tmp_path / "b")
    x = data["modality_vectors"]["image"]
    hits = bundle.search("image", x[:40], 5)
    np.testing.assert_array_equal(hits.rows[:, 0], np.arange(40))
    np.testing.assert_array_equal(hits.generated, data["generated"]["image"][hits.rows])
    fused = bundle.search("fused", data["fused"][:40], 5)
    either = data["generated"]["image"] | data["generated"]["text"]
    np.testing.assert_array_equal(fused.generated, either[fused.rows])
    with pytest.raises(KeyError, match="audio"):
        bundle.search("audio", x[:1], 5)


def test_search_excludes_rows(tmp_path):
    bundle, data = build(tmp_path / "b")
    q = data["modality_vectors"]["text"][:3]
    full = bundle.search("text", q, 20)
    shared = full.rows[0, :5]
    hits = bundle.search("text", q, 10, exclude_rows=shared.tolist())
    assert hits.rows.shape == (3, 10) and (hits.rows >= 0).all()
    assert not np.isin(hits.rows, shared).any()
    np.testing.assert_array_equal(hits.rows[0], full.rows[0, 5:15])  # the next ones, in order
    per_query = [set(full.rows[0, :2]), [], np.array([full.rows[2, 0]])]
    hits = bundle.search("text", q, 10, exclude_rows=per_query)
    np.testing.assert_array_equal(hits.rows[0], full.rows[0, 2:12])
    np.testing.assert_array_equal(hits.rows[1], full.rows[1, :10])
    np.testing.assert_array_equal(hits.rows[2], full.rows[2, 1:11])
    everything = bundle.search("text", q[:1], 10, exclude_rows=np.arange(295))
    assert (everything.rows[0, :5] >= 295).all() and (everything.rows[0, 5:] == -1).all()
    assert np.isneginf(everything.scores[0, 5:]).all() and not everything.generated[0, 5:].any()


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_add_items_without_rebuild(tmp_path, kind):
    folder = tmp_path / "b"
    bundle, data = build(folder, n=2000, kind=kind)
    before = {m: bundle.search(m, data["modality_vectors"][m][:50], 5) for m in DIMS}
    params = bundle.indexes["image"].params
    new = payload(20, start=2000, seed=9)
    rows = bundle.add_items(new["item_ids"], new["modality_vectors"], new["generated"], new["fused"])
    np.testing.assert_array_equal(rows, np.arange(2000, 2020))
    assert bundle.indexes["image"].params == params  # no retraining
    loaded = IndexBundle.load(folder, expect_model_fingerprint="model-a")
    assert len(loaded) == 2020 and loaded.item_ids[-1] == "item2019" and loaded.row_of("item2005") == 2005
    for m in DIMS:
        hits = loaded.search(m, new["modality_vectors"][m], 1)
        np.testing.assert_array_equal(hits.rows[:, 0], rows)  # new items findable
        np.testing.assert_array_equal(loaded.generated[m][2000:], new["generated"][m])
        np.testing.assert_array_equal(loaded.features(m)[2000:], new["modality_vectors"][m])
        np.testing.assert_array_equal(loaded.features(m)[:2000], data["modality_vectors"][m])
        old = loaded.search(m, data["modality_vectors"][m][:50], 5)
        np.testing.assert_array_equal(old.rows[:, 0], before[m].rows[:, 0])  # old items keep their rows
    np.testing.assert_array_equal(loaded.search("fused", new["fused"], 1).rows[:, 0], rows)
    assert _leftovers(tmp_path) == []


def test_add_items_refuses_duplicates_and_bad_shapes(tmp_path):
    bundle, _ = build(tmp_path / "b", n=50)
    new = payload(2, start=49)
    with pytest.raises(DataError, match="'item49'"):
        bundle.add_items(new["item_ids"], new["modality_vectors"], new["generated"], new["fused"])
    with pytest.raises(DataError, match="'x'"):
        bundle.add_items(["x", "x"], new["modality_vectors"], new["generated"], new["fused"])
    wrong = payload(2, start=100)
    wrong["modality_vectors"]["text"] = np.ones((2, 5))
    with pytest.raises(DataError, match="dimension 5"):
        bundle.add_items(wrong["item_ids"], wrong["modality_vectors"], wrong["generated"], wrong["fused"])
    assert len(IndexBundle.load(tmp_path / "b")) == 50 == len(bundle)
    with pytest.raises(DataError, match="repeated"):
        IndexBundle.build(tmp_path / "c", **{**payload(3), "item_ids": ["a", "b", "a"]},
                          model_fingerprint="m", encoder_fingerprint="e")


def test_load_refuses_other_fingerprints(tmp_path):
    folder = tmp_path / "b"
    build(folder, n=20)
    IndexBundle.load(folder, expect_model_fingerprint="model-a", expect_encoder_fingerprint=dict(ENCODER))
    with pytest.raises(IndexMismatch, match=f"{folder}.*model-b"):
        IndexBundle.load(folder, expect_model_fingerprint="model-b")
    with pytest.raises(IndexMismatch, match=f"{folder}.*encoder") as err:
        IndexBundle.load(folder, expect_encoder_fingerprint={"model": "ViT-L-14", "pretrained": None})
    assert isinstance(err.value, ValueError) and "ViT-L-14" in str(err.value)


def test_load_refuses_row_count_mismatch(tmp_path):
    folder = tmp_path / "b"
    build(folder, n=20)
    VectorIndex.build(np.ones((19, DIMS["text"]))).save(folder / "text.faiss")
    record(folder, "text.faiss")
    with pytest.raises(IndexMismatch, match=f"{folder}.*text.faiss has 19 rows.*20 items"):
        IndexBundle.load(folder)


@pytest.mark.parametrize("name", ["meta.json", "fused.faiss", "image.faiss", "features_text.npy", "items.npy"])
def test_load_refuses_missing_files(tmp_path, name):
    folder = tmp_path / "b"
    build(folder, n=20)
    (folder / name).unlink()
    with pytest.raises(IndexMismatch, match=f"{folder}.*{name}.*missing"):
        IndexBundle.load(folder)


def test_load_refuses_corrupt_files(tmp_path):
    folder = tmp_path / "b"
    build(folder, n=20)
    (folder / "image.faiss").write_bytes(b"not an index")
    with pytest.raises(IndexMismatch, match=f"{folder}.*image.faiss"):
        IndexBundle.load(folder)
    (folder / "meta.json").write_text("{ truncated")
    with pytest.raises(IndexMismatch, match=f"{folder}.*meta.json"):
        IndexBundle.load(folder)
    with pytest.raises(IndexMismatch, match="does not exist"):
        IndexBundle.load(tmp_path / "nowhere")


def _fail_on_second_write(monkeypatch):
    real, calls = faiss.write_index, []

    def flaky(index, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        real(index, path)

    monkeypatch.setattr(faiss, "write_index", flaky)
    return calls


def test_failed_rebuild_leaves_previous_bundle(tmp_path, monkeypatch):
    folder = tmp_path / "b"
    _, old = build(folder, n=30)
    calls = _fail_on_second_write(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        build(folder, n=40, seed=1, model_fingerprint="model-b")
    assert len(calls) == 2
    loaded = IndexBundle.load(folder, expect_model_fingerprint="model-a")
    assert loaded.item_ids == old["item_ids"]
    np.testing.assert_array_equal(loaded.features("image"), old["modality_vectors"]["image"])
    assert _leftovers(tmp_path) == []


def test_failed_add_items_leaves_previous_bundle(tmp_path, monkeypatch):
    folder = tmp_path / "b"
    bundle, old = build(folder, n=30)
    _fail_on_second_write(monkeypatch)
    new = payload(5, start=30)
    with pytest.raises(OSError, match="simulated"):
        bundle.add_items(new["item_ids"], new["modality_vectors"], new["generated"], new["fused"])
    assert len(bundle) == 30 and bundle.indexes["image"].ntotal == 30  # memory back in step with disk
    assert len(IndexBundle.load(folder)) == 30
    monkeypatch.undo()
    bundle.add_items(new["item_ids"], new["modality_vectors"], new["generated"], new["fused"])
    assert len(IndexBundle.load(folder)) == 35


def test_build_validates_inputs(tmp_path):
    data = payload(10)
    args = dict(model_fingerprint="m", encoder_fingerprint="e")
    bad = {**data, "generated": {"image": data["generated"]["image"]}}
    with pytest.raises(DataError, match="generated"):
        IndexBundle.build(tmp_path / "b", **bad, **args)
    bad = {**data, "fused": data["fused"][:9]}
    with pytest.raises(DataError, match="9 fused vectors for 10"):
        IndexBundle.build(tmp_path / "b", **bad, **args)
    bad = {**data, "modality_vectors": {**data["modality_vectors"], "fused": np.ones((10, 2))},
           "generated": {**data["generated"], "fused": np.zeros(10, bool)}}
    with pytest.raises(DataError, match="modality name 'fused'"):
        IndexBundle.build(tmp_path / "b", **bad, **args)
    with pytest.raises(ValueError, match="unknown index kind"):
        IndexBundle.build(tmp_path / "b", **data, **args, kind="lsh")
    assert not (tmp_path / "b").exists()




@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_builds_and_searches_leave_the_openmp_thread_count_as_they_found_it(kind: str, monkeypatch) -> None:
    """OpenMP is shared with torch where torch is imported first (training): an index build, append or search
    must leave the process's thread count as it was (a training run that asked for one thread ran its torch
    ops on every core after a FAISS kNN)."""
    calls: list[int] = []
    real_set = faiss.omp_set_num_threads
    monkeypatch.setattr(faiss, "omp_set_num_threads", lambda n: (calls.append(n), real_set(n))[1])
    before = faiss.omp_get_max_threads()
    real_set(1)  # as after `--threads 1`
    try:
        x = clustered(3_000, 16)
        index = VectorIndex.build(x, kind=kind, nlist=16 if kind == "ivf" else None)
        index.add(x[:100])
        index.search(x[:4], 5)  # a small batch: one thread for the call
        index.search(x[:200], 5)
        assert faiss.omp_get_max_threads() == 1
        assert all(n == 1 for n in calls)  # nothing raised it, not even for a moment
        real_set(2)
        index.search(x[:4], 5)
        assert faiss.omp_get_max_threads() == 2 and calls[-1] == 2  # set to 1 for the call, then restored
    finally:
        real_set(before)
