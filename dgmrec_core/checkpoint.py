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

    def add(array: np.ndarray, dtype=None) -> None:  # the array's bytes, hashed in place (no copy when C-ordered)
        h.update(np.ascontiguousarray(array, dtype=dtype).reshape(-1).view(np.uint8))

    add(np.asarray([inter.n_users, inter.n_items], dtype=np.int64))
    for split in (inter.train, inter.valid, inter.test):
        add(split, np.int64)
    for mod in dataset.modalities:
        h.update(mod.name.encode())
        add(mod.observed)
        add(mod.values, np.float32)
    if dataset.new_items is not None:
        add(dataset.new_items, np.int64)
    return h.hexdigest()


def model_shape(model: LightGCN) -> dict[str, Any]:
    return {"n_users": model.n_users, "n_items": model.n_items, "dims": model.dims, "names": model.names}


def _fixed_feature_rows(model: LightGCN) -> dict[str, torch.Tensor]:
    """Feature buffers whose observed rows never change during training (DGMRec's, unless features are
    trained), each with its bool mask of the rows training may change."""
    if not getattr(model, "n_modalities", 0) or model.config.train_features:
        return {}
    return {f"feat_{m}": ~model.observed[:, m] for m in range(model.n_modalities)}


def model_state(model: LightGCN, *, compact: bool = False, clone: bool = True) -> dict[str, Any]:
    """Weights, features and graphs of ``model``: detached copies (``clone``), or the live tensors for a
    state that is written at once. ``compact`` keeps, of each fixed feature buffer, only the rows training
    changes (the unobserved ones: imputed, then generated), under ``feature_rows``: a best-so-far state then
    costs a third of the features instead of all of them under the paper's 2/3-missing protocol; restore it
    into a model attached to the same data."""
    take = (lambda v: v.detach().clone()) if clone else (lambda v: v.detach())
    masks = _fixed_feature_rows(model) if compact else {}
    weights = {k: take(v) for k, v in model.state_dict().items() if k not in masks}
    state = {"weights": weights, "graphs": model.graph_state(), "epochs_generated": model.epochs_generated}
    if masks:
        state["feature_rows"] = {k: getattr(model, k).detach()[rows] for k, rows in masks.items()}
    return state


def compact_state(model: LightGCN, state: dict[str, Any]) -> dict[str, Any]:
    """A whole :func:`model_state` state of ``model`` (as read from a checkpoint) made compact: of each fixed
    feature buffer only the unobserved rows, as ``model_state(compact=True)`` keeps them."""
    masks = _fixed_feature_rows(model)
    if not masks or "feature_rows" in state:
        return state
    weights = {k: v for k, v in state["weights"].items() if k not in masks}
    rows = {k: state["weights"][k][rows.to(state["weights"][k].device)] for k, rows in masks.items()}
    return {**state, "weights": weights, "feature_rows": rows}


def restore_state(model: LightGCN, state: dict[str, Any]) -> None:
    """Load a :func:`model_state` state; a compact one only changes the unobserved feature rows."""
    rows = state.get("feature_rows", {})
    missing, unexpected = model.load_state_dict(state["weights"], strict=not rows)
    if unexpected or set(missing) != set(rows):
        raise RuntimeError(f"state does not fit the model: missing {missing}, unexpected {unexpected}")
    masks = _fixed_feature_rows(model)
    with torch.no_grad():
        for key, values in rows.items():
            getattr(model, key)[masks[key]] = values.to(getattr(model, key).device)
    model.load_graph_state(state["graphs"])
    model.epochs_generated = state["epochs_generated"]


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """torch.save ``payload`` (with a format tag) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)


def read_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint's payload; a clear DataError when the file is missing or not a checkpoint. With
    ``mmap`` the tensors stay in the file, read when used."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DataError(path, f"not a readable checkpoint ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError(path, f"not a DGMRec checkpoint of format {FORMAT}")
    return payload


def load_model(path: str | Path) -> tuple[LightGCN, dict[str, Any]]:
    """The best model of a checkpoint, ready for inference, and the checkpoint's payload."""
    payload = read_checkpoint(path)
    shape = payload["shape"]
    model = build_model(DGMRecConfig.from_saved(payload["config"], str(path)), shape["n_users"], shape["n_items"],
                        shape["dims"], shape["names"])
    best = payload["best"]
    if "feature_rows" in best:  # a training checkpoint's compact best: its fixed feature rows are the current's
        restore_state(model, payload["current"]["state"])
    restore_state(model, best)
    model.eval()
    return model, payload
