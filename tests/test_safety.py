"""Nothing a file holds can run code: hostile checkpoints and masks are refused, and run nothing."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dgmrec_core.checkpoint import load_model, read_checkpoint
from dgmrec_core.errors import DataError
from dgmrec_core.masking import load_mmrec_mask, mask_to_mmrec_dict, make_missing_mask
from ui.cli import main


class Hostile:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"format": 1, "config": {}, "payload": Hostile(marker)}, path)
    return path


def test_hostile_checkpoint_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = hostile_checkpoint(tmp_path / "model.pt", marker)
    for load in (read_checkpoint, load_model):
        with pytest.raises(DataError, match=f"{path}: not a readable checkpoint"):
            load(path)
    assert not marker.exists()


def test_hostile_checkpoint_via_cli_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "ran"
    path = hostile_checkpoint(tmp_path / "model.pt", marker)
    assert main(["evaluate", "--checkpoint", str(path), "--mmrec", str(tmp_path)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert not marker.exists()


def test_hostile_mask_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "missing_items_0.666.npy"
    np.save(path, np.array({"v": [1, 2], "t": Hostile(marker)}, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=f"{path}: cannot read MMRec mask.*refused to load posix.system"):
        load_mmrec_mask(path, 10)
    np.save(path, np.array(Hostile(marker), dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="refused"):
        load_mmrec_mask(path, 10)
    assert not marker.exists()


def test_paper_style_mask_still_loads(tmp_path: Path) -> None:
    """The paper's format: a dict of int64 arrays (and lists) pickled in a 0-d object array."""
    observed = make_missing_mask(50, 2, 2 / 3, seed=1)
    d = mask_to_mmrec_dict(observed)
    d["t"] = [np.int64(i) for i in d["t"]]  # numpy scalars in a list
    np.save(tmp_path / "m.npy", np.array(d, dtype=object), allow_pickle=True)
    assert np.array_equal(load_mmrec_mask(tmp_path / "m.npy", 50), observed)
