"""How much preference signal the content carries, without any training: the references a sceptic tries first.

    python benchmarks/content_signal.py [--data MMREC_FOLDER] [--dataset ml100k|sample-shop]

On ML-100K (or the demo's sample shop) in the full, sparse and new-item settings of
``benchmarks/recommend.py`` (the same splits; new items: figures on the new items' test pairs, all items
ranked), test Recall@20 / NDCG@20 / Recall@50 of rankings that need no model:

- ``popularity``: items by their training interactions, the same list for every user;
- ``content``: a user's profile is the mean of their training items' unit feature vectors, per modality;
  an item's score is the sum over modalities of its cosine to the profile. Rows a modality misses (the
  paper's 2/3 mask) are left out of profiles and score 0 there; ``content, no mask`` uses every row,
  what the features could give at best;
- ``chance``: the expected Recall@20 of a random ranking (20 / the items a user has not trained on).

Writes ``benchmarks/results/content_signal.json``; RESULTS.md section 1 reads it beside the trained models.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recommend import MISSING_RATIO, ROOT, load_setting  # noqa: E402  (benchmarks/, the script's folder)

from dgmrec_core.atomic import atomic_write_text  # noqa: E402
from dgmrec_core.data import Dataset  # noqa: E402
from dgmrec_core.metrics import evaluate_ranking  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "content_signal.json"


def popularity_scores(dataset: Dataset) -> torch.Tensor:
    inter = dataset.interactions
    return torch.from_numpy(np.bincount(inter.train[:, 1], minlength=inter.n_items).astype(np.float32))


def unit_rows(dataset: Dataset) -> list[torch.Tensor]:
    """Each modality's rows scaled to unit length; rows the modality misses set to zero (they carry nothing)."""
    rows = []
    for modality in dataset.modalities:
        x = torch.nn.functional.normalize(torch.from_numpy(np.asarray(modality.values, dtype=np.float32)), dim=1)
        x[~torch.from_numpy(np.asarray(modality.observed, dtype=bool))] = 0
        rows.append(x)
    return rows


def content_scores(dataset: Dataset, rows: list[torch.Tensor], users: torch.Tensor) -> torch.Tensor:
    """Sum over modalities (``rows``: :func:`unit_rows`) of the cosine between each item and the mean of the
    user's observed training rows."""
    inter = dataset.interactions
    train = torch.from_numpy(inter.train)
    scores = torch.zeros(len(users), inter.n_items)
    position = torch.full((inter.n_users,), -1, dtype=torch.long)
    position[users] = torch.arange(len(users))
    mine = train[position[train[:, 0]] >= 0]  # the training pairs of these users
    for x in rows:
        profiles = torch.zeros(len(users), x.shape[1]).index_add_(0, position[mine[:, 0]], x[mine[:, 1]])
        scores += torch.nn.functional.normalize(profiles, dim=1) @ x.T
    return scores


def measure(dataset: Dataset) -> dict[str, dict[str, float]]:
    """Each ranking's test figures; in the new-item setting on the new items' test pairs (ranking all items)."""
    inter = dataset.interactions
    popular, rows = popularity_scores(dataset), unit_rows(dataset)  # once, not per batch of users
    only = {"item_filter": dataset.new_items} if dataset.new_items is not None else {}
    out = {"popularity": evaluate_ranking(lambda u: popular.expand(len(u), -1).clone(), inter.n_items,
                                          inter.train, inter.test, ks=(20, 50), **only),
           "content": evaluate_ranking(lambda u: content_scores(dataset, rows, u), inter.n_items, inter.train,
                                       inter.test, ks=(20, 50), **only)}
    seen = np.bincount(inter.train[:, 0], minlength=inter.n_users)
    tested = np.unique(inter.test[:, 0] if dataset.new_items is None
                       else inter.test[np.isin(inter.test[:, 1], dataset.new_items), 0])
    out["chance"] = {"recall@20": float(np.mean(20 / (inter.n_items - seen[tested])))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/movielens100k-posters/mmrec")
    parser.add_argument("--dataset", choices=["ml100k", "sample-shop"], default="ml100k",
                        help="sample-shop: the demo's shop (make demo builds it), its own missing rows (no mask "
                             "to lift, so no 'content, no mask')")
    args = parser.parse_args()
    records = []
    ratios = (MISSING_RATIO, None) if args.dataset == "ml100k" else (MISSING_RATIO,)
    for setting in ("full", "sparse", "new-item"):
        for ratio in ratios:
            dataset, name = load_setting(args.data, args.dataset, setting, ratio, 0)
            name += "-new-items" if setting == "new-item" else ""
            figures = measure(dataset)
            for ranking, metrics in figures.items():
                if ratio is None and ranking != "content":
                    continue  # popularity and chance do not read features
                label = "content, no mask" if ratio is None else ranking
                records.append({"dataset": name, "ranking": label, **{k: metrics[k] for k in sorted(metrics)}})
    mine = {r["dataset"] for r in records}  # the other catalog's records stay
    kept = [r for r in json.loads(RESULTS.read_text()) if r["dataset"] not in mine] if RESULTS.exists() else []
    atomic_write_text(RESULTS, json.dumps(kept + records, indent=1) + "\n")
    print("| data | ranking | Recall@20 | NDCG@20 | Recall@50 |\n|---|---|---|---|---|")
    for r in records:
        cells = [f"{r[k]:.4f}" if k in r else "-" for k in ("recall@20", "ndcg@20", "recall@50")]
        print(f"| {r['dataset']} | {r['ranking']} | " + " | ".join(cells) + " |")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
