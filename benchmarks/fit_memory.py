"""Peak resident memory of the whole `dgmrec train` path: ``fit`` with a checkpoint on a generated data set,
its epochs validated (issue 13). One measurement per process; prints one JSON line.

    python benchmarks/fit_memory.py [--scenario baby] [--epochs 1] [--tree PATH]

``--tree`` imports ``dgmrec_core`` from another checkout (an older commit, for a before/after: it must
have ``benchmarks/train_speed.py`` with the same ``synthetic``). ``take_features`` is passed where that
tree's ``fit`` has it, as ``dgmrec train`` does.
"""
from __future__ import annotations

import argparse
import inspect
import json
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="baby", help="a generated shape of benchmarks/train_speed.py")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    import torch

    from benchmarks.train_speed import SHAPES, synthetic
    from dgmrec_core.config import DGMRecConfig
    from dgmrec_core.trainer import fit

    torch.set_num_threads(args.threads)
    dataset = synthetic(SHAPES[args.scenario], seed=0)
    config = replace(DGMRecConfig(), epochs=args.epochs, eval_every=1, seed=0)
    extra = {"take_features": True} if "take_features" in inspect.signature(fit).parameters else {}
    cpu = time.process_time()
    with tempfile.TemporaryDirectory() as folder:
        result = fit(dataset, config, checkpoint=Path(folder) / "model.pt", progress=False, **extra)
    print(json.dumps({"tree": str(args.tree), "scenario": args.scenario, "take_features": bool(extra),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "cpu_s": time.process_time() - cpu, "recall@20": result.test["recall@20"]}))


if __name__ == "__main__":
    main()
