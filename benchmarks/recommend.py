"""Recommendation accuracy: DGMRec against LightGCN and no-generation DGMRec on ML-100K (2/3 missing).

    python benchmarks/recommend.py --seeds 0 1 2   # the shared stopping rule: every 3 epochs, patience 26, cap 500
    python benchmarks/recommend.py --merge part1.json part2.json   # one table from runs made apart

Prints a table of test Recall@20 / NDCG@20 (mean ± std over seeds, at the best validation epoch),
seconds per epoch, and writes the raw results as JSON. The mask is the paper's protocol, as shipped
in the data's MMRec folder (missing_items_0.666.npy); seeds change initialisation and sampling.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dgmrec_core.atomic import atomic_write_text  # noqa: E402
from dgmrec_core.config import DGMRecConfig  # noqa: E402
from dgmrec_core.mmrec import load_mmrec  # noqa: E402
from dgmrec_core.trainer import fit  # noqa: E402

MODELS = {
    "dgmrec": {},
    "dgmrec-observed-knn": {"knn_observed_only": True},
    "lightgcn": {"use_modalities": False},
    "no-generation": {"generation": False},
}


def fmt(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def print_table(runs: dict[str, list[dict]], key: str) -> None:
    """Markdown table of mean ± std over each model's runs ("test" or "test_new_items" metrics)."""
    print(f"\n| model | Recall@20 | NDCG@20 | Recall@50 | best epoch | s/epoch | seeds |  ({key})")
    print("|---|---|---|---|---|---|---|")
    for name, rs in runs.items():
        if not rs:
            continue
        print(f"| {name} | {fmt([r[key]['recall@20'] for r in rs])} | {fmt([r[key]['ndcg@20'] for r in rs])} | "
              f"{fmt([r[key]['recall@50'] for r in rs])} | {statistics.mean(r['best_epoch'] for r in rs):.0f} | "
              f"{statistics.mean(r['sec_per_epoch'] for r in rs):.2f} | {len(rs)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/movielens100k-posters/mmrec")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="epoch cap (default: the config's, the shared stopping rule)")
    parser.add_argument("--patience", type=int, help="validations without improvement (default: the config's)")
    parser.add_argument("--models", nargs="+", default=["dgmrec", "lightgcn", "no-generation"], choices=sorted(MODELS))
    parser.add_argument("--new-items", action="store_true", help="the new-item setting (new_items.npy)")
    parser.add_argument("--missing-ratio", default="0.666",
                        help="mask file missing_items_<ratio>.npy; 'none': every modality observed (what the "
                             "modality branch can add at best)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "recommend_results.json")
    parser.add_argument("--merge", type=Path, nargs="+",
                        help="combine the runs of these result files (e.g. from parallel processes) into --out "
                             "and print their table; trains nothing")
    args = parser.parse_args()
    if args.merge:
        merged: dict[str, list[dict]] = {}
        for path in args.merge:
            for name, rs in json.loads(path.read_text())["runs"].items():
                merged.setdefault(name, []).extend(rs)
        atomic_write_text(args.out, json.dumps({"merged_from": [str(p) for p in args.merge], "runs": merged}, indent=2))
        print_table(merged, "test_new_items" if args.new_items else "test")
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    ratio = None if args.missing_ratio.lower() == "none" else args.missing_ratio
    dataset = load_mmrec(args.data, missing_ratio=ratio, new_items=args.new_items)
    runs: dict[str, list[dict]] = {m: [] for m in args.models}
    for seed in args.seeds:
        for name in args.models:
            rule = {k: v for k, v in (("epochs", args.epochs), ("patience", args.patience)) if v is not None}
            config = replace(DGMRecConfig(), seed=seed, **rule, **MODELS[name])
            t0 = time.perf_counter()
            result = fit(dataset, config, progress=False)
            seconds = [h["seconds"] for h in result.history]
            run = {"seed": seed, "best_epoch": result.best_epoch, "epochs_run": len(result.history),
                   "test": result.test, "valid": result.valid, "test_new_items": result.test_new_items,
                   "sec_per_epoch": statistics.median(seconds), "wall_s": time.perf_counter() - t0}
            runs[name].append(run)
            print(f"{name:>20} seed {seed}: recall@20 {result.test['recall@20']:.4f} ndcg@20 "
                  f"{result.test['ndcg@20']:.4f} best epoch {result.best_epoch}/{len(result.history)} "
                  f"{run['sec_per_epoch']:.2f} s/epoch", flush=True)
            # after every run, so a stopped benchmark keeps what it measured
            atomic_write_text(args.out, json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                    "runs": runs}, indent=2))

    print_table(runs, "test_new_items" if args.new_items else "test")


if __name__ == "__main__":
    main()
