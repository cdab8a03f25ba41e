"""Complete every item in every modality: real features where observed, DGMRec's generation elsewhere.

Catalog items the model was trained on take their missing rows from ``DGMRec.generated_features``
(translators + specific generators + decoders, no noise). Items added after training have no place in
the model's graphs, so their missing modalities come from the query path instead
(``DGMRec.query_to_modality`` with the catalog-wide mean preference), averaged over the modalities
the item does have.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dgmrec_core.errors import DataError
from dgmrec_core.model import DGMRec


@dataclass
class Completed:
    """Per modality: ``features`` float32 (n, d_m) with every row filled, ``generated`` bool (n,)."""

    features: dict[str, np.ndarray]
    generated: dict[str, np.ndarray]


def _check(model: DGMRec, features: dict[str, np.ndarray | None], observed: dict[str, np.ndarray]) -> int:
    if not model.n_modalities:
        raise ValueError("the model has no modality branch (a LightGCN baseline): it cannot generate features")
    missing = [n for n in model.names if n not in observed]
    if missing:
        raise ValueError(f"no observed mask for modality {', '.join(missing)}")
    sizes = {len(np.asarray(observed[n])) for n in model.names}
    if len(sizes) != 1:
        raise ValueError(f"observed masks differ in length: {sizes}")
    n = sizes.pop()
    for name, dim in zip(model.names, model.dims):
        x = features.get(name)
        if x is None:
            if np.asarray(observed[name]).any():
                raise ValueError(f"modality {name} is marked observed but has no features")
        elif x.shape != (n, dim):
            raise ValueError(f"{name} features have shape {x.shape}, the model expects ({n}, {dim})")
    return n


def complete_features(model: DGMRec, features: dict[str, np.ndarray],
                      observed: dict[str, np.ndarray]) -> Completed:
    """Completed matrices of the model's own items: observed rows real, the others generated.

    ``features``/``observed`` hold, per modality name, the (n_items, d_m) real features and the bool
    (n_items,) mask the rows are trusted by (the model's training mask, or a superset of it).
    """
    n = _check(model, features, observed)
    if n != model.n_items:
        raise ValueError(f"{n} items given, the model was trained on {model.n_items}")
    model.eval()
    with torch.no_grad():
        generated = model.generated_features(noise=False)
    out = Completed({}, {})
    for m, name in enumerate(model.names):
        obs = np.asarray(observed[name], dtype=bool)
        x = np.array(features[name], dtype=np.float32, copy=True)
        x[~obs] = generated[m].numpy()[~obs]
        out.features[name], out.generated[name] = x, ~obs
    return out


def complete_new_items(model: DGMRec, features: dict[str, np.ndarray | None], observed: dict[str, np.ndarray],
                       *, item_ids: Sequence[str] | None = None, source: str | Path | None = None) -> Completed:
    """Completed features of items unknown to the model (added after training).

    ``features[name]`` is (n, d_m) (rows of unobserved items ignored) or None when no new item has that
    modality. A missing modality is generated from each observed one through the query path with the
    catalog mean preference; several sources are averaged. An item observing no modality cannot be
    completed: DataError naming it (``item_ids``, ``source`` only feed that message).
    """
    n = _check(model, features, observed)
    obs = np.stack([np.asarray(observed[name], dtype=bool) for name in model.names], axis=1)
    empty = ~obs.any(axis=1)
    if empty.any():
        pos = np.flatnonzero(empty)
        names = [item_ids[i] if item_ids is not None else f"#{i}" for i in pos[:5]]
        more = f" and {len(pos) - 5} more" if len(pos) > 5 else ""
        raise DataError(source, f"{len(pos)} new item(s) have neither {' nor '.join(model.names)} "
                                f"({', '.join(map(repr, names))}{more}); add at least one modality per item")
    model.eval()
    out = Completed({}, {})
    with torch.no_grad():
        for dst, name in enumerate(model.names):
            x = (np.zeros((n, model.dims[dst]), dtype=np.float32) if features[name] is None
                 else np.array(features[name], dtype=np.float32, copy=True))
            todo = ~obs[:, dst]
            if todo.any():
                total = torch.zeros(int(todo.sum()), model.dims[dst])
                count = torch.zeros(int(todo.sum()), 1)
                for src, src_name in enumerate(model.names):
                    rows = todo & obs[:, src]
                    if src == dst or not rows.any():
                        continue
                    sel = torch.as_tensor(rows[todo])
                    query = torch.as_tensor(np.asarray(features[src_name], dtype=np.float32)[rows])
                    total[sel] += model.query_to_modality(src, dst, query)
                    count[sel] += 1
                x[todo] = (total / count).numpy()
            out.features[name], out.generated[name] = x, todo
    return out
