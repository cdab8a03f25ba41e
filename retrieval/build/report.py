"""Generation quality of an index: DGMRec's generated features against nearest-neighbour imputation.

``generation_quality`` runs :func:`dgmrec_core.generation_eval.evaluate_generation` on the model's own
items (the held-out items are those with a real feature the model never saw) and turns it into the
``imputation`` part of the bundle's ``GenerationReport`` (``retrieval.index.info``): per modality the
rank of each held-out item's real feature for DGMRec's generated feature and for the nearest-neighbour
copy, and Hit@K curves of both. ``stored_or_computed`` reads that from a bundle, or computes it from the bundle and the
model when an older build did not store it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dgmrec_core.generation_eval import evaluate_generation, hit_at_k, median_rank
from dgmrec_core.model import DGMRec

CURVE_KS = (1, 2, 5, 10, 20, 50, 100)


def generation_quality(model: DGMRec, real: dict[str, np.ndarray], item_ids: Sequence[str],
                       ks: Sequence[int] = CURVE_KS) -> dict[str, Any]:
    """Hit@K of the generated features of items whose real feature the model did not see in training.

    ``real[m]`` (n_items, d_m) holds the real features (all-zero rows where the catalog has none);
    the model's own mask says which rows it saw. Returns, per modality with such items, ``n``,
    ``n_candidates``, ``nn_source``, ``ks``, ``hit`` (``{"dgmrec": [...], "nn": [...]}`` over ``ks``,
    NN only for items missing just that modality), ``median_rank`` of both and ``items`` (id, rank,
    nn_rank, nn_item or None, group). Ranks are 1-based among the items with a real feature.
    """
    observed = model.observed.cpu().numpy()
    result = evaluate_generation(model, [real[m] for m in model.names], observed, ks=tuple(ks))
    out: dict[str, Any] = {}
    for name, r in result.items():
        if not len(r["items"]):
            continue
        ranks, nn_ranks = np.asarray(r["ranks"]), np.asarray(r["nn_ranks"])
        nn_valid = nn_ranks[nn_ranks > 0]
        out[name] = {
            "n": int(len(ranks)), "n_candidates": r["n_candidates"], "nn_source": r["nn_source"],
            "n_nn": int(len(nn_valid)), "ks": list(ks),
            "hit": {"dgmrec": _finite(hit_at_k(ranks, ks).values()), "nn": _finite(hit_at_k(nn_valid, ks).values())},
            "median_rank": {"dgmrec": _finite([median_rank(ranks)])[0], "nn": _finite([median_rank(nn_valid)])[0]},
            "items": [{"item_id": item_ids[i], "rank": int(rank), "nn_rank": int(nn) if nn > 0 else None,
                       "nn_item": item_ids[j] if j >= 0 else None, "group": str(g)}
                      for i, rank, nn, j, g in zip(r["items"], ranks, nn_ranks, r["nn_items"], r["group"])],
        }
    return out


def _finite(values: Any) -> list[float | None]:
    """Floats for JSON: NaN (no items to score) becomes None."""
    return [None if np.isnan(v) else float(v) for v in values]


def stored_or_computed(engine: Any) -> dict[str, Any]:
    """The bundle's stored generation report, or one computed now from its features and model.

    Real features are the bundle's completed features with the generated rows zeroed (held-out items
    keep their real feature in the index), so the result equals what the build would have stored.
    """
    stored = engine.info.report.imputation
    if stored is not None:
        return stored
    model = engine.model
    n = model.n_items
    real = {}
    for m in model.names:
        x = np.array(engine.bundle.features(m)[:n], dtype=np.float32)
        x[engine.bundle.generated[m][:n]] = 0
        real[m] = x
    return generation_quality(model, real, engine.bundle.item_ids[:n])
