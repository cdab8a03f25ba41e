"""Training speed and peak memory of the two training modes (issue 13), one process per measurement.

    python benchmarks/train_speed.py [--scenarios ml100k sample-shop baby items200k items1m]
                                     [--modes paper-exact batch-local batch-local-cached]
                                     [--threads 2] [--seed 0] [--reference-src REFERENCE/src]

- ml100k: the shared MovieLens data, 2/3 missing (shipped mask): seconds per epoch (median of the epochs
  after the first; no validation), beside the paper's reference code: with ``--reference-src``, timed in
  the same run on the same data and threads (benchmarks/reference_speed.py; also on baby).
- sample-shop: the demo's shop (``make demo`` builds it): 1,500 users, 3,000 items, 128-d features; many
  distinct users per batch, so large InfoNCE matrices.
- baby: generated in the shape of Amazon Baby (19,398 users, 7,050 items, 95,062 training interactions,
  long-tailed item popularity, 4,096-d image and 384-d text features, 2/3 missing).
- items200k, items1m: 200,000 / 1,000,000 items (512-d, 2/3 missing, about 5 interactions per item),
  kNN graphs by FAISS (``benchmarks/knn.py``); one epoch, its length estimated as its whole-catalog work
  plus all its batches at the median of ``--batches`` timed batches.

Wall and CPU seconds are both recorded: on a shared machine the CPU time of a one-thread run is the
steadier figure.

Each (scenario, mode) runs in its own process, so peak resident memory (ru_maxrss) is its own. The model,
optimisers and best-so-far state are the trainer's own (``TrainingRun``, with the data's features shared as
``dgmrec train`` shares them). Records go to benchmarks/results/scale.json (kind "training") and a table to
stdout.
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.provenance import code_commit  # noqa: E402
from benchmarks.reference_speed import allocator  # noqa: E402
from benchmarks.scale_records import merge_records  # noqa: E402
from dgmrec_core.config import DGMRecConfig  # noqa: E402
from dgmrec_core.data import Dataset, Modality  # noqa: E402
from dgmrec_core.feature_rows import precision_name  # noqa: E402
from dgmrec_core.graphs import chunked_cosine_knn  # noqa: E402
from dgmrec_core.interactions import build_interactions  # noqa: E402
from dgmrec_core.masking import make_missing_mask  # noqa: E402

log = logging.getLogger("train_speed")

# The paper's reference code, seconds per epoch by torch thread count, from issue 13's table: measured on
# another machine, used only where no same-machine figure exists (``--reference-src`` measures one in the
# run; benchmarks/reference_speed.py). On this project's 2-core VM the reference ran 2.3x slower than these
# with glibc's default allocator settings and about as fast with freed memory kept (MALLOC_MMAP_MAX_=0;
# benchmarks/RESULTS.md section 2d): a ratio to another machine's figure misleads.
ISSUE_REFERENCE_S_PER_EPOCH = {"ml100k": {2: 9.36, 1: 13.4}, "baby": {2: 42.2, 1: 61.6}}
# Each mode's config: the two training modes, and batch-local with cached collaborative layers.
MODES = {"paper-exact": {"training_mode": "paper-exact"}, "batch-local": {"training_mode": "batch-local"},
         "batch-local-cached": {"training_mode": "batch-local", "cf_propagation": "cached"},
         # the generation schedule named (the three above take the default's): 'after' (docs/DESIGN.md,
         # "Generation after training") has no contrastive chain in the training batches
         "paper-exact-joint": {"training_mode": "paper-exact", "gen_training": "joint"},
         "paper-exact-after": {"training_mode": "paper-exact", "gen_training": "after"},
         "batch-local-joint": {"training_mode": "batch-local", "gen_training": "joint"},
         "batch-local-after": {"training_mode": "batch-local", "gen_training": "after"},
         # the paper's InfoNCE terms on 256 sampled anchors (--nce-anchors; docs/DESIGN.md, "Other named deviations")
         "paper-exact-anchors": {"training_mode": "paper-exact", "nce_anchors": 256},
         "batch-local-anchors": {"training_mode": "batch-local", "nce_anchors": 256},
         # the wide feature products, and with -bf16 also the InfoNCE logits, in bfloat16 (--feature-precision bfloat16,
         # --bf16-logits; docs/DESIGN.md, "Other named deviations")
         "paper-exact-bf16-features": {"training_mode": "paper-exact", "feature_precision": "bfloat16"},
         "batch-local-bf16-features": {"training_mode": "batch-local", "feature_precision": "bfloat16"},
         "paper-exact-bf16": {"training_mode": "paper-exact", "feature_precision": "bfloat16", "bf16_logits": True},
         "batch-local-bf16": {"training_mode": "batch-local", "feature_precision": "bfloat16", "bf16_logits": True},
         "batch-local-bf16-features-anchors": {"training_mode": "batch-local", "feature_precision": "bfloat16",
                                               "nce_anchors": 256}}


@dataclass(frozen=True)
class Shape:
    """A generated data set: users, items, training interactions and per-modality feature dimensions."""

    n_users: int
    n_items: int
    n_inter: int
    dims: tuple[int, ...]


SHAPES = {"baby": Shape(19_398, 7_050, 95_062, (4096, 384)),
          "items200k": Shape(50_000, 200_000, 1_000_000, (512, 512)),
          "items1m": Shape(250_000, 1_000_000, 5_000_000, (512, 512))}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic(shape: Shape, seed: int = 0) -> Dataset:
    """``shape.n_inter`` long-tailed training interactions (a quarter as many again for validation and test)
    and clustered features with the paper's 2/3 missing protocol."""
    rng = np.random.default_rng(seed)
    n_users, n_items, n_inter = shape.n_users, shape.n_items, shape.n_inter
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8  # long tail, as in Amazon categories
    popularity = popularity[rng.permutation(n_items)] / popularity.sum()
    users = np.concatenate([np.arange(n_users), rng.integers(0, n_users, size=2 * n_inter)])
    items = np.concatenate([rng.integers(0, n_items, size=n_users),
                            rng.choice(n_items, size=2 * n_inter, p=popularity)])
    total = n_inter + n_inter // 4  # n_inter training pairs, then a tenth of the whole each for valid and test
    _, first = np.unique(users.astype(np.int64) * n_items + items, return_index=True)
    keep = np.sort(first)[:total]  # the first distinct pairs: one per user first, so every user trains
    splits = np.zeros(len(keep), dtype=np.int64)
    splits[n_inter:] = 1 + np.arange(len(keep) - n_inter) % 2
    inter = build_interactions(users[keep].astype(str), items[keep].astype(str), splits=splits, seed=seed,
                               item_ids=[str(i) for i in range(n_items)])
    observed = make_missing_mask(n_items, len(shape.dims), 2 / 3, seed)
    assign = rng.integers(0, 256, size=n_items)
    modalities = []
    for m, dim in enumerate(shape.dims):
        centres = rng.normal(size=(256, dim)).astype(np.float32)
        values = rng.standard_normal(size=(n_items, dim), dtype=np.float32)  # float32 throughout: 1M rows
        values *= 0.5
        values += centres[assign]
        modalities.append(Modality(("image", "text")[m], values, observed[:, m].copy()))
    return Dataset(inter, modalities, name="synthetic")


def measure(dataset: Dataset, config: DGMRecConfig, epochs: int, max_batches: int | None, knn_fn,
            device: str = "cpu") -> dict:
    """Train ``epochs`` epochs (no validation) on ``device`` timing each part: the whole-catalog work before
    and after the batches and every batch, in wall and CPU seconds (on a GPU the clock is read after its
    queued work ends). With ``max_batches``, an epoch times only that many batches and its length is
    estimated as that work plus all its batches at the median batch time."""
    from dgmrec_core import distributed
    from dgmrec_core.trainer import NegativeSampler, TrainingRun

    inter = dataset.interactions
    ctx = distributed.init(device)
    sync = torch.cuda.synchronize if ctx.device.type == "cuda" else (lambda: None)
    wall, cpu = time.perf_counter(), time.process_time()
    # what `dgmrec train` holds: the model on the data's own feature arrays, the compact best-so-far state
    run = TrainingRun(dataset, config, ctx, knn_fn, None, checkpoint=None, progress=False, take_features=True)
    sync()
    graphs = (time.perf_counter() - wall, time.process_time() - cpu)
    log.info("model built and attached (kNN graphs included) in %.1f s", graphs[0])
    model, opt, club_opt = run.model, run.opt, run.club_opt
    rng = np.random.default_rng(config.seed)
    sampler = NegativeSampler(inter.train, inter.n_items, rng)
    n_batches = -(-len(inter.train) // config.batch_size)
    timed = min(n_batches, max_batches or n_batches)
    epoch_wall, epoch_cpu, batch_wall, batch_cpu = [], [], [], []
    model.train()
    for epoch in range(epochs):
        wall, cpu = time.perf_counter(), time.process_time()
        model.begin_epoch(club_opt, epoch, knn_fn)
        order = rng.permutation(len(inter.train))
        for b in range(timed):
            rows = order[b * config.batch_size:(b + 1) * config.batch_size]
            users = inter.train[rows, 0]
            t_wall, t_cpu = time.perf_counter(), time.process_time()
            batch = (users, inter.train[rows, 1], sampler.sample(users))
            loss, _ = model.loss(*(torch.as_tensor(t).to(ctx.device) for t in batch))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sync()
            batch_wall.append(time.perf_counter() - t_wall)
            batch_cpu.append(time.process_time() - t_cpu)
            log.debug("epoch %d batch %d: %.3f s", epoch + 1, b + 1, batch_wall[-1])
        model.end_epoch()
        sync()
        untimed = n_batches - timed  # estimated at the median batch
        epoch_wall.append(time.perf_counter() - wall + untimed * statistics.median(batch_wall))
        epoch_cpu.append(time.process_time() - cpu + untimed * statistics.median(batch_cpu))
    steady = slice(1, None) if epochs > 1 else slice(None)
    return {"sec_per_epoch": statistics.median(epoch_wall[steady]),
            "cpu_s_per_epoch": statistics.median(epoch_cpu[steady]),
            "epochs_timed": epochs, "batches_per_epoch": n_batches, "batches_timed": timed,
            "estimated": timed < n_batches, "batch_s": statistics.median(batch_wall),
            "batch_cpu_s": statistics.median(batch_cpu), "graphs_s": graphs[0], "recall@20": None,
            "device": str(ctx.device),
            "peak_gpu_mb": torch.cuda.max_memory_allocated(ctx.device) / 2**20 if ctx.device.type == "cuda" else None}


def mode_config(mode: str, seed: int, batch_size: int = 0) -> DGMRecConfig:
    """The config a mode trains with: float32 feature rows unless the mode names bfloat16, so each mode measures
    what it always measured (the default 'auto' picks by hardware); ``batch_size`` 0: the default."""
    config = replace(DGMRecConfig(), seed=seed, **{"feature_precision": "float32", **MODES[mode]})
    return replace(config, batch_size=batch_size or config.batch_size)


def run_child(args: argparse.Namespace) -> dict:
    """One (scenario, mode) measurement in this process."""
    config = mode_config(args.mode, args.seed, args.batch_size)
    t0 = time.perf_counter()
    if args.child == "ml100k":
        from dgmrec_core.mmrec import load_mmrec

        dataset = load_mmrec(args.data)
    elif args.child == "sample-shop":  # the demo's shop, as the recommendation benchmark reads it
        from benchmarks.generation import SHOP_INDEX, load_sample_shop

        if not SHOP_INDEX.is_dir():
            raise SystemExit(f"sample-shop: no index at {SHOP_INDEX}; run `make demo` first")
        dataset = load_sample_shop()
    else:
        dataset = synthetic(SHAPES[args.child], seed=args.seed)
    data_s = time.perf_counter() - t0
    log.info("data ready in %.1f s (%d items, %d training interactions)", data_s,
             dataset.interactions.n_items, len(dataset.interactions.train))
    if args.child in ("ml100k", "sample-shop", "baby"):
        out = measure(dataset, config, args.epochs, None, chunked_cosine_knn, args.device)
    else:
        from benchmarks.knn import faiss_knn

        out = measure(dataset, config, 1, args.batches, faiss_knn, args.device)
    return {**out, "data_s": data_s, "train_interactions": int(len(dataset.interactions.train)),
            "feature_precision": precision_name(config.feature_precision, torch.device(out["device"]))}


def run_all(args: argparse.Namespace) -> list[dict]:
    records = []
    threads = args.threads or torch.get_num_threads()
    commit = code_commit()  # the code the children run: read before they start
    references: dict[str, tuple[float | None, str | None]] = {}
    for name in args.scenarios:
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--child", name, "--mode", mode, "--data", str(args.data),
                   "--epochs", str(args.epochs), "--batches", str(args.batches), "--threads", str(threads),
                   "--seed", str(args.seed), "--device", args.device, "--batch-size", str(args.batch_size)]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # its log goes on to ours, live
            if proc.returncode:
                log.error("%s %s failed (exit code %d): its log is above", name, mode, proc.returncode)
                continue
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            if name not in references:  # once per scenario, right after this project's first mode
                references[name] = reference_figure(args, name, threads)
            reference, source = references[name]
            record = {"kind": "training", "benchmark": "benchmarks/train_speed.py", "dataset": name, "mode": mode,
                      "threads": threads, "processes": 1, "batch_size": args.batch_size or DGMRecConfig().batch_size,
                      "seed": args.seed, **result, "reference_s_per_epoch": reference,
                      "reference_source": source, "allocator": allocator(),
                      "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M")}
            records.append(record)
            log.info("%s %s: %.2f s/epoch, peak %.0f MB", name, mode, record["sec_per_epoch"], record["peak_rss_mb"])
    return records


def reference_figure(args: argparse.Namespace, name: str, threads: int) -> tuple[float | None, str | None]:
    """The reference code's seconds per epoch for ``name`` at ``threads``, and where the figure comes from:
    measured now, right after this project's run (``--reference-src``), else issue 13's table. A GPU run gets
    none: the reference was timed on a CPU."""
    if args.device != "cpu" or name not in ISSUE_REFERENCE_S_PER_EPOCH:
        return None, None
    if args.reference_src:
        from benchmarks.reference_speed import measure as measure_reference  # noqa: PLC0415

        record = measure_reference(args.reference_src.resolve(), name, threads, args.epochs, seed=args.seed,
                                   python=args.reference_python)
        if not args.no_save:
            merge_records([record])
        return record["sec_per_epoch"], "same run"
    return ISSUE_REFERENCE_S_PER_EPOCH[name].get(threads), "issue 13's table (another machine)"


def table(records: list[dict]) -> str:
    lines = ["| data | mode | s/epoch (wall) | CPU s/epoch | vs reference | peak RSS MB |", "|---|---|---|---|---|---|"]
    for r in records:
        ref = r.get("reference_s_per_epoch")
        versus = f"{r['sec_per_epoch'] / ref:.3f} of {ref:.2f} s ({r.get('reference_source')})" if ref else "-"
        est = " (est.)" if r.get("estimated") else ""
        on_gpu = f" on {r['device']}, peak GPU {r['peak_gpu_mb']:.0f} MB" if r.get("peak_gpu_mb") is not None else ""
        lines.append(f"| {r['dataset']} | {r['mode']}{on_gpu} | {r['sec_per_epoch']:.2f}{est} | "
                     f"{r['cpu_s_per_epoch']:.2f} | {versus} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", default=["ml100k", "baby", "items200k", "items1m"],
                        choices=["ml100k", "sample-shop", *SHAPES],
                        help="sample-shop: the demo's shop (make demo builds it; 1,500 users, 3,000 items, 128-d)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/movielens100k-posters/mmrec")
    parser.add_argument("--epochs", type=int, default=5, help="epochs timed on ml100k, sample-shop and baby")
    parser.add_argument("--batches", type=int, default=5, help="batches timed on the generated catalogs")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=0,
                        help="BPR triples per batch (0: the config's, 2,048; the reference code trains with 4,096)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: where the model trains; "
                                                        "FAISS kNN graphs are built on the CPU either way")
    parser.add_argument("--reference-src", type=Path, help="the paper's reference code (its checkout's src folder): "
                        "timed right after this project's run on ml100k and baby, same threads and epochs "
                        "(benchmarks/reference_speed.py); without it, ratios use issue 13's figures")
    parser.add_argument("--reference-python", default=sys.executable, help="the interpreter for the reference")
    parser.add_argument("--no-save", action="store_true", help="print only; do not merge into scale.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="paper-exact", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:  # its log to stderr, which the parent passes on live (a run cut short still shows its phases)
        logging.basicConfig(level=logging.INFO, format=f"  [{args.child} {args.mode}] %(message)s", stream=sys.stderr)
        result = run_child(args)
        result["peak_rss_mb"] = peak_mb()
        print(json.dumps(result))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    records = run_all(args)
    if records and not args.no_save:
        merge_records(records)
    print(table(records))


if __name__ == "__main__":
    main()
