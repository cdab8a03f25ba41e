"""Probe (RESULTS section 2e): seconds per training batch of two variants of the code, paired in one process:
one model trains (the default mode of each catalog) and every batch is timed twice back to back, once per
variant, from the same weights, optimiser state, cache and random state, in alternating order, so
process-to-process speed differences of the machine (5-10 % here) cancel. Prints medians per variant and
the median of the per-batch ratios (second variant / first).

- ``--compare feature-precision``: float32 against bfloat16 feature rows (``config.feature_precision``);
- ``--compare cross-entropy``: the InfoNCE cross-entropy as log_softmax-then-gather (the autograd form) against
  ``losses.product_cross_entropy`` (float32 rows in both).

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 python benchmarks/results/probes/paired_batch_probe.py \
        ml100k|baby [--compare feature-precision|cross-entropy] [--epochs 1] [--threads 2]
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
import torch.nn.functional as F  # noqa: E402

from dgmrec_core import distributed, losses  # noqa: E402
from dgmrec_core.config import DGMRecConfig  # noqa: E402
from dgmrec_core.graphs import chunked_cosine_knn  # noqa: E402
from dgmrec_core.trainer import NegativeSampler, TrainingRun  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["ml100k", "baby"])
    parser.add_argument("--compare", choices=["feature-precision", "cross-entropy"], default="feature-precision")
    parser.add_argument("--epochs", type=int, default=1)
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
    fused = losses.product_cross_entropy

    def autograd_form(left, right, rows, cols, scale):
        return -F.log_softmax(left @ right.T, dim=1)[rows, cols].sum() * scale

    if args.compare == "feature-precision":
        variants = {p: (replace(config, feature_precision=p), fused) for p in ("float32", "bfloat16")}
    else:
        variants = {"log_softmax": (config, autograd_form), "product_cross_entropy": (config, fused)}
    first, second = variants
    times: dict[str, list[float]] = {v: [] for v in variants}
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
            for variant in ((first, second) if b % 2 else (second, first)):
                model.load_state_dict(saved[0])
                opt.load_state_dict(saved[1])
                model._cache = copy.deepcopy(saved[2])
                torch.set_rng_state(saved[3])
                model.config, losses.product_cross_entropy = variants[variant]
                start = time.perf_counter()
                loss, _ = model.loss(*batch)
                opt.zero_grad()
                loss.backward()
                opt.step()
                times[variant].append(time.perf_counter() - start)
            model.config, losses.product_cross_entropy = config, fused  # on from the step timed second
        model.end_epoch()
    ratios = [b / a for a, b in zip(times[first], times[second])]
    out = {"scenario": args.scenario, "compare": args.compare, "threads": args.threads, "batches": len(ratios),
           f"{first}_batch_s": statistics.median(times[first]), f"{second}_batch_s": statistics.median(times[second]),
           "median_ratio": statistics.median(ratios), "ratio_q25_q75": list(np.quantile(ratios, [0.25, 0.75]))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
