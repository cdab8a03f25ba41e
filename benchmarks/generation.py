"""Generation quality: the paper's retrieval test for every generation method, several seeds.

For each dataset and seed: the paper's 2/3 missing mask (half the masked items lose both modalities, a
quarter each lose one) on top of what the catalog already misses, DGMRec trained twice (the default
contrastive generator and the paper's, same seed, same epoch budget and stopping rule), then for every
item whose masked modality has a real feature: the rank of that real feature among every item's real
features of the modality, by cosine to the generated one (Hit@10, Hit@20, median rank). References on the
same items: nearest-neighbour, ridge and mean imputation, and the other modality's own vector (where
the encoders' spaces align: the sample shop's CLIP model; MovieLens' spaces are not aligned). Also the
mean pairwise cosine of the generated rows beside that of the same items' real rows, and the
per-dimension spread of generated over real.

    python benchmarks/generation.py --datasets sample-shop ml100k --seeds 0 1 2

Writes ``benchmarks/results/generation.json`` (one record per dataset, method, modality, group, seed)
and the table beside it (``generation.md``); ``--merge`` combines files of runs made in parallel. The sample shop comes from ``dgmrec demo`` (its
index under ``indexes/sample-shop`` and the shop under ``.cache/demo/sample-shop``).
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgmrec_core.atomic import atomic_write_text
from dgmrec_core.config import DGMRecConfig
from dgmrec_core.data import Dataset, Modality
from dgmrec_core.features import observed_from_rows
from dgmrec_core.generation_eval import hit_at_k, median_rank, ranks_of_real
from dgmrec_core.heldout import generation_candidates
from dgmrec_core.imputation import mean_imputation
from dgmrec_core.interactions import build_interactions, load_interactions
from dgmrec_core.masking import make_missing_mask
from dgmrec_core.mmrec import load_mmrec
from dgmrec_core.trainer import fit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ML100K = ROOT.parent / "shared" / "data" / "movielens100k-posters" / "mmrec"
SHOP_INDEX = ROOT / "indexes" / "sample-shop"
SHOP_DATA = ROOT / ".cache" / "demo" / "sample-shop"
VARIANTS = {"default": {}, "paper": {"generator": "paper"},
            "default-no-refit": {"gen_refit_steps": 0}, "default-no-calibration": {"gen_calibration": False},
            "default-generator-chain": {"gen_chain_scope": "generator"}, "after": {"gen_training": "after"},
            "light-chain": {"gen_weight": 0.1}}
log = logging.getLogger("generation")


def load_ml100k() -> Dataset:
    return load_mmrec(ML100K, missing_ratio=None)


def load_sample_shop() -> Dataset:
    """The demo's shop: real features from its index (generated rows zeroed), its interaction log."""
    from retrieval.index.bundle import IndexBundle  # the benchmark reads the product's own index

    bundle = IndexBundle.load(SHOP_INDEX)
    modalities = []
    for m in bundle.modalities:
        x = np.array(bundle.features(m), dtype=np.float32)
        real = ~np.asarray(bundle.generated[m], dtype=bool)
        x[~real] = 0
        modalities.append(Modality(m, x, real))
    table = load_interactions(SHOP_DATA / "interactions.csv")
    inter = build_interactions(table.users, table.items, timestamps=table.timestamps, item_ids=bundle.item_ids,
                               source=table.path, rows=table.rows)
    return Dataset(inter, modalities, name="sample-shop")


LOADERS = {"ml100k": load_ml100k, "sample-shop": load_sample_shop}


def masked(base: Dataset, seed: int) -> Dataset:
    """``base`` with the paper's 2/3 mask (seeded) on top of its own missing rows."""
    mask = make_missing_mask(base.n_items, len(base.modalities), 2 / 3, seed)
    modalities = [Modality(m.name, m.values, observed_from_rows(m.values) & m.observed & mask[:, i])
                  for i, m in enumerate(base.modalities)]
    return replace(base, modalities=modalities)


def _pairwise_cos(x: np.ndarray, limit: int = 2000) -> float:
    x = np.asarray(x, dtype=np.float64)[:limit]
    if len(x) < 2:
        return float("nan")
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sims = u @ u.T
    return float((sims.sum() - np.trace(sims)) / (len(u) * (len(u) - 1)))


def _spread_ratio(gen: np.ndarray, real: np.ndarray) -> float:
    return float(np.mean(np.asarray(gen).std(0) / np.maximum(np.asarray(real).std(0), 1e-12)))


def score_run(model, base: Dataset, dataset: Dataset, methods: bool) -> list[dict[str, Any]]:
    """Records for DGMRec's generation and, with ``methods``, the references, per modality and group."""
    real = [m.values for m in base.modalities]
    has_real = [observed_from_rows(v) & m.observed for v, m in zip(real, base.modalities)]
    observed = dataset.observed
    model.eval()
    with torch.no_grad():
        generated = [g.numpy() for g in model.generated_features(noise=False)]
    n_missing = (~observed).sum(1)
    out = []
    for dst, mod in enumerate(dataset.modalities):
        src = next(a for a in range(len(real)) if a != dst)
        pairs = observed[:, src] & observed[:, dst]
        for group, rows in (("one", ~observed[:, dst] & (n_missing == 1) & observed[:, src] & has_real[dst]),
                            ("both", ~observed[:, dst] & (n_missing == len(real)) & has_real[dst])):
            items = np.flatnonzero(rows)
            if not len(items):
                continue
            if group == "one":
                vectors = generation_candidates(model, real, pairs, src, dst, items, generated[dst][items])
                if not methods:
                    vectors = {"dgmrec": vectors["dgmrec"]}
            else:
                vectors = {"dgmrec": generated[dst][items]}
                if methods:
                    vectors["mean"] = mean_imputation(len(items), real[dst][observed[:, dst]])
            for method, vec in vectors.items():
                ranks = ranks_of_real(vec, real[dst], items, has_real[dst])
                out.append({"method": method, "generated": mod.name, "group": group, "n": int(len(items)),
                            "n_candidates": int(has_real[dst].sum()), **hit_at_k(ranks, (10, 20)),
                            "median_rank": median_rank(ranks),
                            "pairwise_cos_generated": _pairwise_cos(vec),
                            "pairwise_cos_real": _pairwise_cos(real[dst][items]),
                            "spread_ratio": _spread_ratio(vec, real[dst][items]) if len(items) > 1 else float("nan")})
    return out


def run(datasets: list[str], seeds: list[int], epochs: int, patience: int, eval_every: int,
        variants: list[str], save: Path | None = None) -> list[dict[str, Any]]:
    """Every run's records; with ``save``, all records so far are written there after each run."""
    records = []
    for name in datasets:
        base = LOADERS[name]()
        for seed in seeds:
            dataset = masked(base, seed)
            for label in variants:
                config = replace(DGMRecConfig(), seed=seed, epochs=epochs, patience=patience, eval_every=eval_every,
                                 **VARIANTS[label])
                started = time.perf_counter()
                result = fit(dataset, config, progress=False)
                log.info("%s seed %d %s: best epoch %d, test recall@20 %.4f (%.0f s)", name, seed, label,
                         result.best_epoch, result.test["recall@20"], time.perf_counter() - started)
                for r in score_run(result.model, base, dataset, methods=label == "default"):
                    method = label if r["method"] == "dgmrec" else r["method"]
                    records.append({"dataset": name, "seed": seed, **r, "method": method,
                                    "best_epoch": result.best_epoch, "test_recall@20": result.test["recall@20"]})
                if save is not None:
                    save.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(save, json.dumps(records, indent=1) + "\n")
    return records


def _mean_std(values: list[float]) -> str:
    v = np.asarray([x for x in values if x == x], dtype=np.float64)
    if not len(v):
        return "-"
    return f"{v.mean():.3f} ± {v.std():.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def table(records: list[dict[str, Any]]) -> list[str]:
    lines = ["| dataset | generated | group | method | n | chance Hit@10 | Hit@10 | Hit@20 | median rank | "
             "pairwise cos gen / real | spread gen/real |", "|" + "---|" * 11]
    keys = sorted({(r["dataset"], r["generated"], r["group"]) for r in records}, key=lambda k: (k[0], k[1], k[2] != "one"))
    order = [*VARIANTS, "nn", "ridge", "mean", "direct"]
    for key in keys:
        mine = [r for r in records if (r["dataset"], r["generated"], r["group"]) == key]
        for method in [m for m in order if any(r["method"] == m for r in mine)]:
            rs = [r for r in mine if r["method"] == method]
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {method} | {rs[0]['n']} | "
                         f"{10 / rs[0]['n_candidates']:.3f} | {_mean_std([r['hit@10'] for r in rs])} | "
                         f"{_mean_std([r['hit@20'] for r in rs])} | {_mean_std([r['median_rank'] for r in rs])} | "
                         f"{_mean_std([r['pairwise_cos_generated'] for r in rs])} / "
                         f"{_mean_std([r['pairwise_cos_real'] for r in rs])} | {_mean_std([r['spread_ratio'] for r in rs])} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(LOADERS), default=["sample-shop", "ml100k"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=60, help="epoch cap of each training run")
    parser.add_argument("--patience", type=int, default=10, help="validations without improvement before stopping")
    parser.add_argument("--eval-every", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["default", "paper"],
                        help="generators to train (the references are scored with the first)")
    parser.add_argument("--out", type=Path, default=RESULTS / "generation.json")
    parser.add_argument("--merge", type=Path, nargs="+",
                        help="combine these result files (runs made in parallel) into --out instead of running")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    if args.merge:
        records = [r for path in args.merge for r in json.loads(path.read_text())]
    else:
        records = run(args.datasets, args.seeds, args.epochs, args.patience, args.eval_every, args.variants,
                      save=args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(records, indent=1) + "\n")
    command = "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    seeds = sorted({r["seed"] for r in records})
    text = ["# Generation quality (issue 8)", "", f"`{command}` ({platform.machine()}, {args.threads} thread(s), "
            f"{time.strftime('%Y-%m-%d')}); mean ± std over seeds {seeds}.", "", *table(records), ""]
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
