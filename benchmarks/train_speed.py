"""Training speed and peak memory: ML-100K, an Amazon-Clothing-scale catalog, and 200,000 items.

    python benchmarks/train_speed.py [--scenarios ml100k clothing items200k] [--threads 2]

Each scenario runs in its own process so that its peak resident memory (ru_maxrss) is its own.
- ml100k: the shared MovieLens data, 2/3 missing (shipped mask); seconds per training epoch (median of
  the epochs after the first), with the reference figure of the paper's official code on this machine.
- clothing: generated, 40,000 users, 23,000 items, 280,000 interactions, 512-d features, 2/3 missing.
- items200k: 200,000 items (512-d, 2/3 missing): kNN graphs (FAISS backend) and a few training batches.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dgmrec_core.config import DGMRecConfig  # noqa: E402
from dgmrec_core.data import Dataset, Modality  # noqa: E402
from dgmrec_core.interactions import build_interactions  # noqa: E402
from dgmrec_core.masking import make_missing_mask  # noqa: E402

# The paper's reference code on the shared MovieLens data (2/3 missing), seconds per epoch by torch thread
# count: measured quietly on this 2-core machine, back to back with ours, same data and threads
# (the figures of issue 11): ours then took 2.76 s (2 threads) and 3.97 s (1 thread), a 3.4x lead.
# An earlier constant of 17 s had been taken on a busy machine and overstated the lead (6x).
OFFICIAL_S_PER_EPOCH = {2: 9.36, 1: 13.4}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic(n_users: int, n_items: int, n_inter: int, dim: int, seed: int = 0) -> Dataset:
    """Power-law interactions and clustered features with the paper's 2/3 missing protocol."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8  # long tail, as in Amazon categories
    popularity = popularity[rng.permutation(n_items)] / popularity.sum()
    users = np.concatenate([np.arange(n_users), rng.integers(0, n_users, size=2 * n_inter)])
    items = np.concatenate([rng.integers(0, n_items, size=n_users), rng.choice(n_items, size=2 * n_inter, p=popularity)])
    _, first = np.unique(users.astype(np.int64) * n_items + items, return_index=True)
    keep = np.sort(first)[:n_inter]  # the first n_inter distinct pairs (every user among them)
    users, items = users[keep], items[keep]
    inter = build_interactions(users.astype(str), items.astype(str), seed=seed,
                               item_ids=[str(i) for i in range(n_items)])
    observed = make_missing_mask(n_items, 2, 2 / 3, seed)
    centres = rng.normal(size=(256, dim)).astype(np.float32)
    assign = rng.integers(0, 256, size=n_items)
    modalities = []
    for m, name in enumerate(("image", "text")):
        values = centres[assign] + rng.normal(scale=0.5, size=(n_items, dim)).astype(np.float32)
        modalities.append(Modality(name, values, observed[:, m].copy()))
    return Dataset(inter, modalities, name="synthetic")


def run_fit(dataset: Dataset, epochs: int) -> dict:
    from dgmrec_core.trainer import fit

    config = replace(DGMRecConfig(), epochs=epochs, eval_every=epochs, patience=10**6)
    t0 = time.perf_counter()
    result = fit(dataset, config, progress=False)
    seconds = [h["seconds"] for h in result.history]
    return {"sec_per_epoch": statistics.median(seconds[1:] or seconds), "epochs": len(seconds),
            "first_epoch_s": seconds[0], "wall_s": time.perf_counter() - t0,
            "train_interactions": int(len(dataset.interactions.train)), "recall@20": result.test["recall@20"]}


def scenario_ml100k(args: argparse.Namespace) -> dict:
    from dgmrec_core.mmrec import load_mmrec

    out = run_fit(load_mmrec(args.data), args.epochs)
    official = OFFICIAL_S_PER_EPOCH.get(args.threads or torch.get_num_threads())
    if official is not None:  # only thread counts the reference was measured with
        out["official_s_per_epoch"] = official
        out["speedup_vs_official"] = official / out["sec_per_epoch"]
    return out


def scenario_clothing(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    dataset = synthetic(40_000, 23_000, 280_000, 512)
    out = run_fit(dataset, 2)
    out["data_s"] = time.perf_counter() - t0 - out["wall_s"]
    return out


def scenario_items200k(args: argparse.Namespace) -> dict:
    from dgmrec_core.model import DGMRec
    from dgmrec_core.trainer import NegativeSampler
    from benchmarks.knn import faiss_knn

    dataset = synthetic(50_000, 200_000, 600_000, 512)
    config = DGMRecConfig()
    model = DGMRec(config, dataset.n_users, dataset.n_items, [512, 512], ["image", "text"])
    t0 = time.perf_counter()
    model.attach(dataset, knn_fn=faiss_knn)
    graphs_s = time.perf_counter() - t0
    opt = torch.optim.Adam(model.main_parameters(), lr=config.lr)
    train = dataset.interactions.train
    sampler = NegativeSampler(train, dataset.n_items, np.random.default_rng(0))
    times = []
    for b in range(3):
        rows = np.arange(b * config.batch_size, (b + 1) * config.batch_size)
        t = time.perf_counter()
        loss, _ = model.loss(torch.as_tensor(train[rows, 0]), torch.as_tensor(train[rows, 1]),
                             torch.as_tensor(sampler.sample(train[rows, 0])))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    model.generate_missing()
    model.refresh_graphs(knn_fn=faiss_knn)
    refresh_s = time.perf_counter() - t
    return {"graphs_s": graphs_s, "batch_s": statistics.median(times), "generate_and_refresh_s": refresh_s,
            "knn_recall@10": knn_recall(model.features(0)[model.observed[:, 0]], 10, faiss_knn),
            "graph_edges": {k: int(g._nnz()) for k, g in model.graphs.items()}}


def knn_recall(features: torch.Tensor, k: int, knn_fn, sample: int = 500) -> float:
    """Recall@k of ``knn_fn``'s neighbours against exact cosine top-k, on ``sample`` random rows."""
    idx, _ = knn_fn(features, k)
    rows = torch.as_tensor(np.random.default_rng(0).choice(len(features), size=sample, replace=False))
    x = torch.nn.functional.normalize(features, dim=1)
    exact = (x[rows] @ x.T).topk(k, dim=1).indices
    return float((idx[rows][:, :, None] == exact[:, None, :]).any(2).float().mean())


SCENARIOS = {"ml100k": scenario_ml100k, "clothing": scenario_clothing, "items200k": scenario_items200k}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/movielens100k-posters/mmrec")
    parser.add_argument("--epochs", type=int, default=6, help="epochs timed on ML-100K")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        result = SCENARIOS[args.child](args)
        result["peak_rss_mb"] = peak_mb()
        print(json.dumps(result))
        return
    results = {}
    for name in args.scenarios:
        cmd = [sys.executable, __file__, "--child", name, "--data", str(args.data), "--epochs", str(args.epochs),
               "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    print("\n| scenario | s/epoch (or per batch) | peak RSS MB | notes |\n|---|---|---|---|")
    for name, r in results.items():
        if name == "items200k":
            print(f"| {name} | {r['batch_s']:.2f} s/batch | {r['peak_rss_mb']:.0f} | kNN graphs {r['graphs_s']:.1f} s "
                  f"(IVF recall@10 {r['knn_recall@10']:.3f}), generate+refresh {r['generate_and_refresh_s']:.1f} s |")
        else:
            note = (f"{r['speedup_vs_official']:.1f}x faster than the reference code's {r['official_s_per_epoch']:.2f} s "
                    f"(measured quietly, same threads)"
                    if "speedup_vs_official" in r else f"{r['train_interactions']} train interactions")
            print(f"| {name} | {r['sec_per_epoch']:.2f} | {r['peak_rss_mb']:.0f} | {note} |")


if __name__ == "__main__":
    main()
