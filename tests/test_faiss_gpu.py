"""FAISS search on a GPU copy where faiss has GPUs: exercised on the CPU with a stand-in for faiss's GPU calls."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from retrieval.index import gpu
from retrieval.index.vectors import VectorIndex


@pytest.fixture()
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """faiss with one 'GPU': a copy is a CPU clone (HNSW refused, as by faiss); returns the copied kinds."""
    copies: list[str] = []

    def to_gpu(_resources: object, device: int, index: faiss.Index) -> faiss.Index:
        assert device == 0
        if isinstance(index, faiss.IndexHNSW):
            raise RuntimeError("HNSW has no GPU version")  # noqa: TRY004 - what faiss raises
        copies.append(type(index).__name__)
        return faiss.clone_index(index)

    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    monkeypatch.setattr(gpu, "_RESOURCES", [])
    return copies


def _vectors(n: int = 400, d: int = 16) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)


def test_searches_run_on_a_copy_made_again_after_changes(fake_gpu: list[str]) -> None:
    x = _vectors()
    index = VectorIndex.build(x, kind="ivf", nlist=8, nprobe=8)
    expected = faiss.clone_index(index._index).search(x[:5] / np.linalg.norm(x[:5], axis=1, keepdims=True), 3)
    _, rows = index.search(x[:5], 3)
    np.testing.assert_array_equal(rows, expected[1])
    index.search(x[:5], 3)
    assert fake_gpu == ["IndexIVFFlat"]  # one copy for both searches
    index.add(_vectors(10))
    index.search(x[:1], 3)
    index.set_search_params(nprobe=2)
    index.search(x[:1], 3)
    assert len(fake_gpu) == 3  # remade after the rows and after the search parameters changed


def test_hnsw_and_opt_out_stay_on_the_cpu(fake_gpu: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    x = _vectors()
    hnsw = VectorIndex.build(x, kind="hnsw")
    assert hnsw.search(x[:2], 3)[1].shape == (2, 3) and fake_gpu == []
    monkeypatch.setenv("DGMREC_FAISS_GPU", "0")
    flat = VectorIndex.build(x, kind="flat")
    assert flat.search(x[:2], 1)[1][:, 0].tolist() == [0, 1] and fake_gpu == []
