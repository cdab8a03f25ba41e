"""Checkpoints: model weights, graphs, config and the data fingerprint, saved atomically."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_path
from .config import DGMRecConfig
from .data import Dataset
from .errors import DataError
from .lightgcn import LightGCN, build_model

FORMAT = 1


def dataset_fingerprint(dataset: Dataset) -> str:
    """sha256 over the splits, the observed masks and the raw features: what training depended on."""
    h = hashlib.sha256()
    inter = dataset.interactions
    h.update(np.asarray([inter.n_users, inter.n_items], dtype=np.int64).tobytes())
    for split in (inter.train, inter.valid, inter.test):
        h.update(np.ascontiguousarray(split, dtype=np.int64).tobytes())
    for mod in dataset.modalities:
        h.update(mod.name.encode())
        h.update(np.ascontiguousarray(mod.observed).tobytes())
        h.update(np.ascontiguousarray(mod.values, dtype=np.float32).tobytes())
    if dataset.new_items is not None:
        h.update(np.ascontiguousarray(dataset.new_items, dtype=np.int64).tobytes())
    return h.hexdigest()


def model_shape(model: LightGCN) -> dict[str, Any]:
    return {"n_users": model.n_users, "n_items": model.n_items, "dims": model.dims, "names": model.names}


def model_state(model: LightGCN) -> dict[str, Any]:
    """Weights, features and graphs of ``model``, detached copies."""
    return {"weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "graphs": model.graph_state(), "epochs_generated": model.epochs_generated}


def restore_state(model: LightGCN, state: dict[str, Any]) -> None:
    model.load_state_dict(state["weights"])
    model.load_graph_state(state["graphs"])
    model.epochs_generated = state["epochs_generated"]


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """torch.save ``payload`` (with a format tag) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's payload; a clear DataError when the file is missing or not a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DataError(path, f"not a readable checkpoint ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError(path, f"not a DGMRec checkpoint of format {FORMAT}")
    return payload


def load_model(path: str | Path) -> tuple[LightGCN, dict[str, Any]]:
    """The best model of a checkpoint, ready for inference, and the checkpoint's payload."""
    payload = read_checkpoint(path)
    shape = payload["shape"]
    model = build_model(DGMRecConfig.from_dict(payload["config"]), shape["n_users"], shape["n_items"],
                        shape["dims"], shape["names"])
    restore_state(model, payload["best"])
    model.eval()
    return model, payload
