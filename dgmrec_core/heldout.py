"""Held-out measurement of generation and of each query route, and the route an index answers with.

Items that observe every modality in the catalog but had one hidden from training are the test: their
real feature of the hidden modality is known, the model never saw it. For each ordered pair of
modalities (src -> dst) and those items:

- generation: the dst feature DGMRec generated for the item, beside the simple references
  (nearest-neighbour, ridge and mean imputation, and the src vector itself where the spaces align);
- routes: the item's real src feature as a query, turned into a dst query vector by each route
  (``dgmrec``: translator + catalog preference + decoder; ``direct``: the src vector as is;
  ``fused``: the normalised sum of both), as a typed query or an uploaded image would be.

Both are scored by the rank of the item's own real dst feature among every item's real dst feature
(Hit@10, Hit@20, median rank; chance Hit@10 is 10 / candidates). ``auto_route`` picks, per pair, the
route with the best Hit@10 (median rank breaks ties), which is what an index's ``auto`` route uses.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .generation_eval import hit_at_k, median_rank, nearest_neighbour_imputation, ranks_of_real
from .imputation import direct_imputation, mean_imputation, ridge_imputation
from .model import DGMRec

ROUTES = ("dgmrec", "direct", "fused")
METHODS = ("dgmrec", "nn", "ridge", "mean", "direct")
KS = (10, 20)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fuse(translated: np.ndarray, direct: np.ndarray) -> np.ndarray:
    """The ``fused`` route's query vectors: the normalised sum of the normalised translated and direct ones."""
    return _unit(_unit(translated) + _unit(direct))


def route_vectors(model: DGMRec, src: int, dst: int, x_src: np.ndarray) -> dict[str, np.ndarray]:
    """Query vectors of every available route for src features ``x_src`` (n, d_src), catalog preference."""
    model.eval()
    with torch.no_grad():
        translated = model.query_to_modality(src, dst, torch.as_tensor(np.asarray(x_src, dtype=np.float32))).numpy()
    out = {"dgmrec": translated}
    direct = direct_imputation(x_src, model.dims[dst])
    if direct is not None:
        out["direct"] = direct
        out["fused"] = fuse(translated, direct)
    return out


def _scores(ranks: np.ndarray) -> dict[str, float]:
    return {**hit_at_k(ranks, KS), "median_rank": median_rank(ranks)}


def generation_candidates(model: DGMRec, real: Sequence[np.ndarray], pairs: np.ndarray, src: int, dst: int,
                          items: np.ndarray, generated: np.ndarray) -> dict[str, np.ndarray]:
    """The dst features of ``items`` by every generation method. ``pairs`` (bool (N,)): items observing both
    modalities in training; ``generated``: DGMRec's generated dst features of ``items``."""
    x_src = real[src][items]
    out = {"dgmrec": generated,
           "nn": nearest_neighbour_imputation(real[src], real[dst], pairs, pairs, items),
           "ridge": ridge_imputation(x_src, real[src][pairs], real[dst][pairs]),
           "mean": mean_imputation(len(items), real[dst][model.observed[:, dst].cpu().numpy()])}
    direct = direct_imputation(x_src, model.dims[dst])
    if direct is not None:
        out["direct"] = direct
    return out


def heldout_report(model: DGMRec, real: Sequence[np.ndarray], has_real: Sequence[np.ndarray]) -> dict[str, Any]:
    """Generation and route scores per ordered modality pair on the items the model's mask hides.

    ``real[m]`` (N, d_m) are the catalog's real features (rows without one are ignored through
    ``has_real[m]``, bool (N,)); the model's own ``observed`` mask says what training saw. Returns
    ``{"pairs": [...], "warnings": [...]}``, each pair with ``src``, ``dst``, ``n``, ``n_candidates``,
    ``chance``, ``generation`` and ``routes`` (method -> Hit@10, Hit@20, median rank), ``auto``.
    Pairs without held-out items are left out.
    """
    observed = model.observed.cpu().numpy()
    real = [np.asarray(r, dtype=np.float32) for r in real]
    has_real = [np.asarray(h, dtype=bool) for h in has_real]
    model.eval()
    with torch.no_grad():
        generated = [g.numpy() for g in model.generated_features(noise=False)]
    pairs_out, warnings = [], []
    for src, src_name in enumerate(model.names):
        for dst, dst_name in enumerate(model.names):
            if src == dst:
                continue
            items = np.flatnonzero(observed[:, src] & ~observed[:, dst] & has_real[dst] & has_real[src])
            pairs = observed[:, src] & observed[:, dst]
            if not len(items) or pairs.sum() < 5:
                continue
            candidates = has_real[dst]

            def score(vectors: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
                return {k: _scores(ranks_of_real(v, real[dst], items, candidates)) for k, v in vectors.items()}

            generation = score(generation_candidates(model, real, pairs, src, dst, items, generated[dst][items]))
            routes = score(route_vectors(model, src, dst, real[src][items]))
            entry = {"src": src_name, "dst": dst_name, "n": int(len(items)), "n_candidates": int(candidates.sum()),
                     "chance": float(min(1.0, 10 / max(1, candidates.sum()))), "generation": generation,
                     "routes": routes, "auto": auto_route(routes)}
            pairs_out.append(entry)
            warnings.extend(_warnings(entry))
    return {"pairs": pairs_out, "warnings": warnings}


def auto_route(routes: dict[str, dict[str, float]]) -> str:
    """The route with the best Hit@10 (then the lower median rank); 'dgmrec' wins exact ties."""
    order = sorted(routes, key=lambda r: (-routes[r]["hit@10"], routes[r]["median_rank"], r != "dgmrec"))
    return order[0]


def _warnings(entry: dict[str, Any]) -> list[str]:
    out = []
    gen, n = entry["generation"], entry["n"]
    pair = f"{entry['src']} -> {entry['dst']}"
    mine = gen["dgmrec"]["hit@10"]
    for ref, label in (("nn", "nearest-neighbour imputation"), ("mean", "mean imputation"),
                       ("direct", "the other modality's own vector")):
        if ref in gen and gen[ref]["hit@10"] > mine:
            out.append(f"{pair}: DGMRec's generated {entry['dst']} features find the item less often than "
                       f"{label} (Hit@10 {mine:.2f} against {gen[ref]['hit@10']:.2f}, {n} held-out items)")
    if entry["auto"] != "dgmrec":
        best, mine = entry["routes"][entry["auto"]], entry["routes"]["dgmrec"]
        how = (f"finds held-out items more often than the DGMRec route (Hit@10 {best['hit@10']:.2f} against "
               f"{mine['hit@10']:.2f})" if best["hit@10"] > mine["hit@10"] else
               f"ranks held-out items higher than the DGMRec route at the same Hit@10 {mine['hit@10']:.2f} "
               f"(median rank {best['median_rank']:.0f} against {mine['median_rank']:.0f})")
        out.append(f"{pair}: the '{entry['auto']}' route {how}; the 'auto' route uses '{entry['auto']}'")
    return out
