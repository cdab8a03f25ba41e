"""New-item recall on the two-cluster toy catalog of the tests, per training variant: a cheap first check of
how a candidate default treats items without interactions, before the hour-long runs on real data.

The toy (tests/conftest.py ``make_new_item_toy_dataset``, as tests/test_untrained_items.py uses it): 40 users,
60 items in two clusters that the features reveal, each user likes 12 items of one cluster, 30% of items
miss a modality, 20% of items are new (no training or validation interaction). Recall@10 on the new
items' test interactions (chance 10/60) and on every test interaction, at two training lengths.

    python benchmarks/chain_toy.py --seeds 0 1 2 3 4 --epochs 8 24
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import make_new_item_toy_dataset  # noqa: E402
from dgmrec_core.atomic import atomic_write_text  # noqa: E402
from dgmrec_core.config import DGMRecConfig  # noqa: E402
from dgmrec_core.trainer import fit  # noqa: E402
from provenance import code_commit  # noqa: E402
from recommend import MODELS  # noqa: E402

VARIANTS = ("dgmrec", "dgmrec-light-chain", "dgmrec-generator-chain", "dgmrec-after", "dgmrec-batch-local",
            "dgmrec-paper", "no-generation")
BASE = DGMRecConfig(batch_size=128, knn_k=5, gen_refit_steps=0)  # tests/test_untrained_items.py's schedule
RESULTS = ROOT / "benchmarks" / "results"


def summary(records: list[dict], variants, epochs) -> str:
    lines = ["| variant | " + " | ".join(f"new items, {e} epochs | all test, {e} epochs" for e in epochs) + " |",
             "|---|" + "---|---|" * len(epochs)]
    for v in variants:
        cells = []
        for e in epochs:
            for key in ("new_recall@10", "recall@10"):
                vals = np.array([r[key] for r in records if r["variant"] == v and r["epochs"] == e])
                cells.append(f"{vals.mean():.3f} ± {vals.std(ddof=1) if len(vals) > 1 else 0:.3f}")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, nargs="+", default=[8, 24])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=sorted(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "chain_toy.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)  # the toy's validation split is tiny; its warnings say nothing here
    dataset = make_new_item_toy_dataset()
    runs = [(v, e, s) for v in args.variants for e in args.epochs for s in args.seeds]
    records = []
    for variant, epochs, seed in tqdm(runs, desc="toy runs"):
        config = replace(BASE, **MODELS[variant], epochs=epochs, eval_every=epochs, seed=seed)
        result = fit(dataset, config, progress=False)
        records.append({"variant": variant, "epochs": epochs, "seed": seed,
                        "new_recall@10": result.test_new_items["recall@10"], "recall@10": result.test["recall@10"]})
    table = summary(records, args.variants, args.epochs)
    chance = 10 / dataset.interactions.n_items
    payload = {"command": "python benchmarks/chain_toy.py " + " ".join(sys.argv[1:]), "commit": code_commit(),
               "chance_new_recall@10": chance, "records": records}
    atomic_write_text(args.out, json.dumps(payload, indent=1))
    atomic_write_text(args.out.with_suffix(".md"), f"Toy new-item check (chance {chance:.3f}; mean ± std over "
                                                    f"seeds {args.seeds})\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
