"""Does the content-neighbour fill of untrained items (docs/DESIGN.md deviation 4) cost warm-item accuracy?

The fill touches only the ID embeddings of items without a training interaction, which no training batch
reads, so training is the same with and without it: one model is trained with the default config and its
validation and test metrics are computed with ``untrained_items`` 'content-neighbours' and 'paper'.

    python benchmarks/untrained_toggle.py --epochs 60 --seed 0
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dgmrec_core.atomic import atomic_write_text  # noqa: E402
from dgmrec_core.config import DGMRecConfig  # noqa: E402
from dgmrec_core.mmrec import load_mmrec  # noqa: E402
from dgmrec_core.trainer import evaluate, fit  # noqa: E402
from provenance import code_commit  # noqa: E402

ML100K = ROOT.parent / "shared" / "data" / "movielens100k-posters" / "mmrec"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "untrained_toggle.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_mmrec(ML100K, missing_ratio="0.666")
    model = fit(dataset, DGMRecConfig(seed=args.seed, epochs=args.epochs), progress=False).model
    model.eval()
    record = {"dataset": "ml100k", "setting": "full", "seed": args.seed, "epochs": args.epochs,
              "commit": code_commit()}
    for mode in ("content-neighbours", "paper"):
        model.config = replace(model.config, untrained_items=mode)
        record[mode] = {split: evaluate(model, dataset, split) for split in ("valid", "test")}
        print(f"{mode}: test recall@20 {record[mode]['test']['recall@20']:.4f}, valid recall@20 "
              f"{record[mode]['valid']['recall@20']:.4f}", flush=True)
    atomic_write_text(args.out, json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
