"""The compressed index kind "ivfpq" (issue 13): IVF-PQ codes re-ranked with full vectors kept on disk."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from dgmrec_core.errors import DataError
from retrieval.index import vectors
from retrieval.index.bundle import IndexBundle
from retrieval.index.compressed import pq_layout, sidecar
from retrieval.index.storage import verify_bundle
from retrieval.index.vectors import VectorIndex, auto_kind, normalise
from tests.test_indexes import DIMS, build, clustered, payload, recall


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x = clustered(12_050, 64, seed=5)
    return x[:12_000], x[12_000:]


@pytest.fixture(scope="module")
def index(data) -> VectorIndex:
    return VectorIndex.build(data[0], kind="ivfpq", seed=1)


def test_builds_compressed_and_finds_exact_neighbours(data, index):
    base, queries = data
    assert index.kind == "ivfpq" and index.ntotal == 12_000 and index.dim == 64
    assert index.params == {"nlist": 110, "nprobe": vectors.IVFPQ_NPROBE, "m": 8, "nbits": 8,
                            "rerank": vectors.DEFAULT_RERANK}
    truth = VectorIndex.build(base, kind="flat").search(queries, 10)[1]
    index.set_search_params(rerank=1000)
    scores, rows = index.search(queries, 10)
    assert recall(rows, truth) >= 0.95
    assert rows.dtype == np.int64 and scores.dtype == np.float32 and scores.shape == (50, 10)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", normalise(queries), base[rows]), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()  # best first, exact cosines
    index.set_search_params(rerank=vectors.DEFAULT_RERANK)


def test_save_load_round_trip_without_pickle(tmp_path, data, index):
    base, queries = data
    index.save(tmp_path / "v.faiss")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.faiss", "v.faiss.vectors.npy"]
    stored = np.load(sidecar(tmp_path / "v.faiss"), allow_pickle=False)
    assert stored.dtype == np.float16 and stored.shape == (12_000, 64)
    np.testing.assert_allclose(stored, base, atol=1e-3)
    loaded = VectorIndex.load(tmp_path / "v.faiss")
    assert (loaded.kind, loaded.ntotal, loaded.params) == ("ivfpq", 12_000, index.params)
    s0, r0 = index.search(queries, 10)
    s1, r1 = loaded.search(queries, 10)
    assert recall(r1, r0) >= 0.98  # float16 full vectors: near-ties may swap
    np.testing.assert_allclose(s1[:, 0], s0[:, 0], atol=2e-3)


def test_append_then_save_and_load(tmp_path, data):
    base, _ = data
    index = VectorIndex.build(base[:6000], kind="ivfpq", seed=2)
    index.save(tmp_path / "v.faiss")
    index = VectorIndex.load(tmp_path / "v.faiss")
    new = base[6000:6100] * 3.0  # norms do not matter
    np.testing.assert_array_equal(index.add(new), np.arange(6000, 6100))
    scores, rows = index.search(new, 1)
    np.testing.assert_array_equal(rows[:, 0], np.arange(6000, 6100))  # findable before saving
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-3)
    index.save(tmp_path / "v.faiss")  # over the file its old rows are read from
    again = VectorIndex.load(tmp_path / "v.faiss")
    assert again.ntotal == 6100
    np.testing.assert_array_equal(again.search(new, 1)[1][:, 0], np.arange(6000, 6100))
    np.testing.assert_array_equal(again.search(base[:50], 1)[1][:, 0], np.arange(50))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.faiss", "v.faiss.vectors.npy"]


def test_auto_picks_ivfpq_above_the_memory_threshold(monkeypatch, data):
    assert auto_kind(49_999, 512) == "flat"
    assert auto_kind(vectors.AUTO_COMPRESS_BYTES // (4 * 512), 512) == "ivf"
    assert auto_kind(vectors.AUTO_COMPRESS_BYTES // (4 * 512) + 1, 512) == "ivfpq"
    monkeypatch.setattr(vectors, "AUTO_EXACT_MAX", 1000)
    monkeypatch.setattr(vectors, "AUTO_COMPRESS_BYTES", 4000 * 64 * 4)
    assert VectorIndex.build(data[0][:4000], kind="auto").kind == "ivf"
    assert VectorIndex.build(data[0][:4001], kind="auto").kind == "ivfpq"


def test_small_sets_and_refusals(tmp_path, data):
    assert pq_layout(100_000, 512) == (64, 8) and pq_layout(100_000, 100) == (10, 8)
    assert pq_layout(2000, 64) == (8, 5)  # too few rows to train 256 values per code
    tiny = VectorIndex.build(data[0][:300], kind="ivfpq")
    assert tiny.search(data[0][7], 400)[1].shape == (1, 300)  # k clamped, every row reachable
    with pytest.raises(ValueError, match="store"):
        VectorIndex(faiss.IndexIVFPQ(faiss.IndexFlatIP(8), 8, 1, 2, 4, faiss.METRIC_INNER_PRODUCT))
    tiny.save(tmp_path / "v.faiss")
    np.save(sidecar(tmp_path / "v.faiss"), np.zeros((299, 64), np.float16))
    with pytest.raises(DataError, match="expected float16"):
        VectorIndex.load(tmp_path / "v.faiss")
    np.save(sidecar(tmp_path / "v.faiss"), np.array([{"a": 1}] * 300, dtype=object))
    with pytest.raises(DataError, match="not a readable"):  # never unpickled
        VectorIndex.load(tmp_path / "v.faiss")
    sidecar(tmp_path / "v.faiss").unlink()
    with pytest.raises(DataError, match="missing"):
        VectorIndex.load(tmp_path / "v.faiss")


def test_bundle_of_ivfpq_indexes_appends_and_verifies(tmp_path):
    folder = tmp_path / "b"
    bundle, first = build(folder, n=2000, kind="ivfpq")
    assert set(bundle.meta["index_kinds"].values()) == {"ivfpq"}
    new = payload(20, start=2000, seed=9)
    rows = bundle.add_items(new["item_ids"], new["modality_vectors"], new["generated"], new["fused"])
    assert verify_bundle(folder) == []  # the full-vector files are recorded and checked
    loaded = IndexBundle.load(folder)
    for m in DIMS:
        assert loaded.indexes[m].kind == "ivfpq" and loaded.indexes[m].ntotal == 2020
        np.testing.assert_array_equal(loaded.search(m, new["modality_vectors"][m], 1).rows[:, 0], rows)
        np.testing.assert_array_equal(loaded.search(m, first["modality_vectors"][m][:20], 1).rows[:, 0],
                                      np.arange(20))


def test_longer_full_vector_file_reads_only_the_index_rows(tmp_path, data):
    """A standalone save that stopped between its two files: new (longer) vectors, old index."""
    index = VectorIndex.build(data[0][:3000], kind="ivfpq")
    index.save(tmp_path / "v.faiss")
    old = (tmp_path / "v.faiss").read_bytes()
    index.add(data[0][3000:3100])
    index.save(tmp_path / "v.faiss")
    (tmp_path / "v.faiss").write_bytes(old)
    loaded = VectorIndex.load(tmp_path / "v.faiss")
    assert loaded.ntotal == 3000
    np.testing.assert_array_equal(loaded.search(data[0][:20], 1)[1][:, 0], np.arange(20))
    loaded.add(data[0][3000:3010])
    loaded.save(tmp_path / "w.faiss")
    assert np.load(sidecar(tmp_path / "w.faiss")).shape == (3010, 64)


def test_search_in_a_forked_child(tmp_path, data, index):
    """The row-reading threads belong to one process: a child forked after searching makes its own."""
    import multiprocessing

    index.save(tmp_path / "v.faiss")
    loaded = VectorIndex.load(tmp_path / "v.faiss")
    expected = loaded.search(data[1][:3], 5)[1]  # starts the parent's reading threads
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=lambda: send.send(loaded.search(data[1][:3], 5)[1]))
    child.start()
    try:
        assert receive.poll(60), "the forked child's search hung"
        np.testing.assert_array_equal(receive.recv(), expected)
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()
