"""Catalog encoding in data-parallel shards: 2 CPU processes under torchrun fill the same feature cache as one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval.catalog import load_catalog
from retrieval.encode.cache import MANIFEST, encode_catalog
from retrieval.encode.clip import ClipEncoder

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model-name", "dgmrec-tiny", "--pretrained", "none", "--encoder-seed", "0", "--device", "cpu"]


def _catalog(folder: Path, n: int = 7) -> Path:
    """n items: texts (one repeated, one missing) and images (one missing), files under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["item_id,text,image"]
    for i in range(n):
        Image.new("RGB", (24 + 4 * i, 20), (30 * i % 256, 90, 255 - 20 * i)).save(folder / f"{i}.png")
        text = "" if i == 3 else ("a red mug" if i in (1, 5) else f"item number {i}")
        rows.append(f"i{i},{text},{'' if i == 4 else f'{i}.png'}")
    (folder / "catalog.csv").write_text("\n".join(rows) + "\n")
    return folder / "catalog.csv"


def _torchrun_encode(catalog: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ui.cli", "encode", str(catalog), "--cache", str(cache), *TINY, "--threads", "1"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)


def test_two_shards_write_the_cache_one_process_would(tmp_path: Path) -> None:
    path = _catalog(tmp_path / "shop")
    proc = _torchrun_encode(path, tmp_path / "sharded")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("encoded 7 items") == 1  # rank 0 alone reports
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == ["image.npy", MANIFEST, "text.npy"]

    catalog, _ = load_catalog(path)
    encoder = ClipEncoder("dgmrec-tiny", pretrained=None, seed=0, device="cpu")
    single = encode_catalog(catalog, encoder, tmp_path / "single")
    manifest = json.loads((tmp_path / "sharded" / MANIFEST).read_text())
    assert manifest == json.loads((tmp_path / "single" / MANIFEST).read_text())
    for modality in ("image", "text"):
        sharded = np.load(tmp_path / "sharded" / f"{modality}.npy")
        np.testing.assert_allclose(sharded, single.features[modality], atol=1e-5)

    again = encode_catalog(catalog, encoder, tmp_path / "sharded")  # one process reuses the sharded cache
    assert again.n_encoded == {"image": 0, "text": 0}
