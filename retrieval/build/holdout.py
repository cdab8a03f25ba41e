"""The held-out items of a build: a seeded share of the items with every modality loses one for training,
and what the model generates for them is scored against the real feature (DESIGN.md, "Routes and the
held-out test"). Held-out items keep their real feature in the index."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dgmrec_core.errors import DataError
from retrieval.index.vectors import normalise


@dataclass
class Holdout:
    """Items whose ``modality`` is hidden from training; ``rows`` are item positions."""

    rows: np.ndarray
    modality: list[str]

    def hide(self, observed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copies of the ``observed`` masks with each held-out item's held-out modality marked missing."""
        hidden = {m: mask.copy() for m, mask in observed.items()}
        for row, m in zip(self.rows, self.modality):
            hidden[m][row] = False
        return hidden


def choose_holdout(observed: dict[str, np.ndarray], share: float, seed: int) -> Holdout:
    """A seeded ``share`` of the items observing every modality, each losing one modality in turn."""
    if not 0 <= share < 1:
        raise DataError(None, f"holdout must be in [0, 1), got {share}", field="holdout")
    names = list(observed)
    full = np.flatnonzero(np.all([observed[m] for m in names], axis=0))
    n = int(round(share * len(full)))
    if share > 0 and len(full) >= 2:
        n = max(n, 1)
    rows = np.random.default_rng(seed).permutation(full)[:n]
    return Holdout(rows=rows.astype(np.int64), modality=[names[j % len(names)] for j in range(n)])


def score_heldout(holdout: Holdout, real: dict[str, np.ndarray], generated: dict[str, np.ndarray],
                    completed: dict[str, np.ndarray], observed: dict[str, np.ndarray],
                    item_ids: list[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Scores of the generated features of held-out items, and those features per modality."""
    entries: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    for m in real:
        pick = np.asarray([mod == m for mod in holdout.modality], dtype=bool)
        rows = holdout.rows[pick]
        arrays[f"heldout_generated_{m}"] = generated[m][rows].astype(np.float32)
        if not len(rows):
            continue
        gen, truth = normalise(generated[m][rows]), normalise(real[m][rows])
        mean = normalise(real[m][observed[m]].mean(0, keepdims=True))
        sims = normalise(completed[m]) @ gen.T  # (n_items, n_rows): rank of the real item
        own = sims[rows, np.arange(len(rows))]
        ranks = (sims > own[None, :]).sum(0) + 1
        for j, row in enumerate(rows):
            entries.append({"item_id": item_ids[row], "row": int(row), "modality": m,
                            "cosine": float(gen[j] @ truth[j]), "mean_imputation_cosine": float(mean[0] @ truth[j]),
                            "rank": int(ranks[j])})
    summary = {}
    for m in real:
        mine = [e for e in entries if e["modality"] == m]
        if mine:
            summary[m] = {"items": len(mine), "mean_cosine": float(np.mean([e["cosine"] for e in mine])),
                          "mean_imputation_cosine": float(np.mean([e["mean_imputation_cosine"] for e in mine])),
                          "median_rank": float(np.median([e["rank"] for e in mine])),
                          "n_items": int(len(completed[m]))}
    return {"items": entries, "summary": summary}, arrays


def with_real(completed: np.ndarray, real: np.ndarray, held: Holdout, m: str) -> np.ndarray:
    """``completed`` with the held-out rows of modality ``m`` set back to their real features."""
    rows = held.rows[np.asarray([mod == m for mod in held.modality], dtype=bool)]
    out = completed.copy()
    out[rows] = real[rows]
    return out
