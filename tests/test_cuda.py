"""The GPU path (issue 13): training, checkpoints, encoding and the training benchmark on a CUDA device.

The GPU tests are skipped where torch sees no CUDA GPU, as on CI; the device machine runs them
(``benchmarks/gpu_check.sh``). The same seed draws the same initial weights and negatives on either
device, so a run on the GPU must train like the CPU run; only the order of floating-point sums differs.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_toy_dataset
from dgmrec_core.checkpoint import load_model
from dgmrec_core.config import DGMRecConfig
from dgmrec_core.trainer import evaluate, fit

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA GPU here (CI has none); benchmarks/gpu_check.sh runs these on one")

CONFIG = DGMRecConfig(epochs=9, batch_size=128, patience=50, knn_k=5, refresh_every=2, seed=7, eval_every=3,
                      gen_refit_steps=0)


@needs_cuda
@pytest.mark.parametrize("mode", ["paper-exact", "batch-local"])
def test_training_on_the_gpu_trains_like_the_cpu(mode: str, tmp_path: Path) -> None:
    dataset = make_toy_dataset()
    config = replace(CONFIG, training_mode=mode)
    cpu = fit(dataset, config, progress=False, device="cpu")
    gpu = fit(dataset, config, progress=False, device="cuda", checkpoint=tmp_path / "gpu.pt")
    assert next(gpu.model.parameters()).device.type == "cuda"
    first_cpu, first_gpu = (sum(r.history[0]["loss"].values()) for r in (cpu, gpu))
    assert first_gpu == pytest.approx(first_cpu, rel=1e-3)  # same weights, same batches: the same first epoch
    for metric in ("recall@20", "ndcg@20"):
        assert gpu.test[metric] == pytest.approx(cpu.test[metric], abs=0.05)
    assert gpu.test["recall@20"] > 0.8  # the CPU runs reach 0.95 and 0.90; 60 items, 20 slots: chance is 0.39

    # the GPU run's checkpoint loads on the CPU and scores the same
    loaded, _ = load_model(tmp_path / "gpu.pt")
    assert next(loaded.parameters()).device.type == "cpu"
    assert evaluate(loaded, dataset, "test")["recall@20"] == pytest.approx(gpu.test["recall@20"], abs=0.02)


@needs_cuda
def test_encoding_on_the_gpu_matches_the_cpu() -> None:
    from retrieval.encode.clip import ClipEncoder

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)) for _ in range(5)]
    texts = ["a red cotton shirt", "blue running shoes", "a wooden table", "", "soft baby blanket"]
    on = {d: ClipEncoder("dgmrec-tiny", None, device=d, seed=3) for d in ("cpu", "cuda")}
    assert next(on["cuda"].model.parameters()).device.type == "cuda"
    for encode in ("encode_images", "encode_texts"):
        inputs = images if encode == "encode_images" else texts
        cpu, gpu = (getattr(on[d], encode)(inputs) for d in ("cpu", "cuda"))
        assert gpu.dtype == np.float32 and gpu.shape == cpu.shape
        assert np.min(np.sum(cpu * gpu, axis=1)) > 0.999  # unit rows: cosine of the two devices' vectors


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_the_training_benchmark_times_either_device(device: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from train_speed import Shape, measure, synthetic

    from dgmrec_core.graphs import chunked_cosine_knn

    dataset = synthetic(Shape(n_users=200, n_items=300, n_inter=2_000, dims=(32, 16)), seed=0)
    out = measure(dataset, replace(CONFIG, epochs=2), 2, None, chunked_cosine_knn, device)
    assert out["device"].startswith(device)
    assert (out["peak_gpu_mb"] > 0) if device == "cuda" else out["peak_gpu_mb"] is None
    assert out["sec_per_epoch"] > 0 and out["batches_per_epoch"] == -(-2_000 // CONFIG.batch_size)
