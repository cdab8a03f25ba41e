"""Probe (RESULTS section 2e): seconds per training batch with float32 and with bfloat16 feature rows, paired
in one process: one model trains (float32 rows; the default mode of each catalog) and every batch is timed
twice back to back, once per precision, from the same weights, optimiser state, cache and random state, so
process-to-process speed differences of the machine (5-10 % here) cancel. Prints medians per precision and
the median of the per-batch ratios.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 python benchmarks/results/probes/feature_precision_probe.py \
        ml100k|baby [--epochs 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from benchmarks.train_speed import SHAPES, synthetic  # noqa: E402
from dgmrec_core import distributed  # noqa: E402
from dgmrec_core.config import DGMRecConfig  # noqa: E402
from dgmrec_core.graphs import chunked_cosine_knn  # noqa: E402
from dgmrec_core.trainer import NegativeSampler, TrainingRun  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["ml100k", "baby"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.scenario == "ml100k":
        from dgmrec_core.mmrec import load_mmrec
        dataset = load_mmrec(ROOT.parent / "shared/data/movielens100k-posters/mmrec")
    else:
        dataset = synthetic(SHAPES["baby"], seed=0)
    config = replace(DGMRecConfig(), seed=0, feature_precision="float32")
    run = TrainingRun(dataset, config, distributed.init("cpu"), chunked_cosine_knn, None, checkpoint=None,
                      progress=False, take_features=True)
    model, opt, club_opt = run.model, run.opt, run.club_opt
    inter = dataset.interactions
    rng = np.random.default_rng(0)
    sampler = NegativeSampler(inter.train, inter.n_items, rng)
    configs = {p: replace(config, feature_precision=p) for p in ("float32", "bfloat16")}
    times: dict[str, list[float]] = {p: [] for p in configs}
    model.train()
    for epoch in range(args.epochs):
        model.begin_epoch(club_opt, epoch, chunked_cosine_knn)
        order = rng.permutation(len(inter.train))
        for b in range(-(-len(order) // config.batch_size)):
            rows = order[b * config.batch_size:(b + 1) * config.batch_size]
            batch = [torch.as_tensor(t) for t in (inter.train[rows, 0], inter.train[rows, 1],
                                                   sampler.sample(inter.train[rows, 0]))]
            saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()),
                     copy.deepcopy(model._cache), torch.get_rng_state())
            for precision in (("float32", "bfloat16") if b % 2 else ("bfloat16", "float32")):
                model.load_state_dict(saved[0])
                opt.load_state_dict(saved[1])
                model._cache = copy.deepcopy(saved[2])
                torch.set_rng_state(saved[3])
                model.config = configs[precision]
                start = time.perf_counter()
                loss, _ = model.loss(*batch)
                opt.zero_grad()
                loss.backward()
                opt.step()
                times[precision].append(time.perf_counter() - start)
            model.config = config  # training goes on from the step timed second (the order alternates)
        model.end_epoch()
    ratios = [b / f for f, b in zip(times["float32"], times["bfloat16"])]
    out = {"scenario": args.scenario, "threads": args.threads, "batches": len(ratios),
           "float32_batch_s": statistics.median(times["float32"]),
           "bfloat16_batch_s": statistics.median(times["bfloat16"]),
           "median_ratio": statistics.median(ratios), "ratio_q25_q75": list(np.quantile(ratios, [0.25, 0.75]))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
