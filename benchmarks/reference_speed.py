"""Training seconds per epoch of the paper's reference code on this machine (issue 13's yardstick).

    python benchmarks/reference_speed.py --reference-src PATH/TO/DGMRec/src [--scenarios ml100k baby]
                                         [--threads 2 1] [--epochs 4]

The reference code (github.com/ptkjw1997/DGMRec, built on MMRec) is not part of this project: point
``--reference-src`` at its ``src`` folder in a checkout of your own. Nothing in that folder is changed;
it writes its usual ``log/`` there. This script:

- exports each scenario in the MMRec layout the reference reads (``<name>.inter`` with userID, itemID,
  x_label; ``image_feat.npy``, ``text_feat.npy``; ``missing_items_0.666.npy``, a dict of item ids that lose
  the image ('v'), the text ('t') or both ('all')) under ``--work``. ml100k: the shared MovieLens data as
  this project loads it, so the 19 posterless movies count as missing images in both codes (left as zero
  rows, the reference's cosine graph is NaN everywhere and its first loss NaN). baby: the generated Baby
  shape of ``train_speed.py``, the same data its ``baby`` scenario trains on.
- runs the reference's own ``main.py`` (its DGMRec defaults, missing-modality setting) for ``--epochs``
  epochs with the given torch threads, from a small launcher that sets the threads and, on a machine
  without CUDA, lets the reference's one unconditional ``.cuda()`` call leave its module on the CPU;
- reads the per-epoch training time the reference logs ("epoch N training [time: X s ...]", validation
  excluded) and takes the median of the epochs after the first.

Records (``"kind": "training"``, ``"mode": "reference-code"``) go to benchmarks/results/scale.json, where
``train_speed.py`` reads them as the reference figure of its ratios; ``train_speed.py --reference-src``
runs both codes back to back in one run.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.provenance import code_commit  # noqa: E402
from benchmarks.scale_records import merge_records  # noqa: E402
from dgmrec_core.data import Dataset  # noqa: E402

log = logging.getLogger("reference_speed")

SHARED_MMREC = ROOT.parent / "shared/data/movielens100k-posters/mmrec"
WORK = ROOT / ".cache" / "reference-data"
MODE = "reference-code"
EPOCH_TIME = re.compile(r"epoch (\d+) training \[time: ([0-9.]+)s")
BATCH_SIZE = re.compile(r"^train_batch_size\s*[=:]\s*(\d+)", re.MULTILINE)  # its config, as it logs it
# Runs the reference's main.py with THREADS torch threads; without CUDA, Module.cuda() leaves a module
# where it is (the reference builds its CLUB estimators with an unconditional .cuda()).
LAUNCHER = """
import runpy, sys, torch
torch.set_num_threads(int(sys.argv[1])); torch.set_num_interop_threads(1)
if not torch.cuda.is_available():
    torch.nn.Module.cuda = lambda self, device=None: self
sys.argv = sys.argv[2:]; sys.path.insert(0, '.')
runpy.run_path('main.py', run_name='__main__')
"""


def export_mmrec(dataset: Dataset, folder: Path, name: str) -> None:
    """Write ``dataset`` in the MMRec layout the reference reads (module docstring) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    inter = dataset.interactions
    rows = [np.column_stack([split, np.full(len(split), label)])
            for label, split in enumerate((inter.train, inter.valid, inter.test))]
    np.savetxt(folder / f"{name}.inter", np.concatenate(rows), fmt="%d", delimiter="\t",
               header="userID\titemID\tx_label", comments="")
    missing = {}
    for mod in dataset.modalities:
        np.save(folder / f"{mod.name}_feat.npy", np.ascontiguousarray(mod.values, dtype=np.float32))
        missing[mod.name] = ~mod.observed
    image, text = missing["image"], missing["text"]
    mask = {"v": np.flatnonzero(image & ~text), "t": np.flatnonzero(text & ~image),
            "all": np.flatnonzero(image & text)}
    np.save(folder / "missing_items_0.666.npy", mask, allow_pickle=True)  # the reference's own format
    log.info("%s: exported to %s (%d users, %d items; missing v %d, t %d, both %d)", name, folder,
             inter.n_users, inter.n_items, len(mask["v"]), len(mask["t"]), len(mask["all"]))


def allocator() -> str:
    """glibc's allocator settings (MALLOC_* variables) the run and its children inherit, as one label ("glibc
    default" without any). They decide how much of a run goes to page faults: on this project's 2-core VM the
    reference code took 21.85 s per ML-100K epoch by default and 10.14 s with its freed buffers kept
    (benchmarks/RESULTS.md section 2d), so a record says which were in force, and records differ by them."""
    given = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")]
    return " ".join(given) or "glibc default"


def scenario_data(name: str, seed: int = 0) -> Dataset:
    if name == "ml100k":
        from dgmrec_core.mmrec import load_mmrec

        return load_mmrec(SHARED_MMREC)
    from benchmarks.train_speed import SHAPES, synthetic

    return synthetic(SHAPES[name], seed=seed)


def epoch_times(log_text: str) -> list[float]:
    """The per-epoch training seconds of a reference log, in epoch order."""
    return [float(t) for _, t in sorted((int(e), t) for e, t in EPOCH_TIME.findall(log_text))]


def run_reference(src: Path, work: Path, name: str, threads: int, epochs: int, python: str = sys.executable) -> dict:
    """Train the reference on ``work/name`` for ``epochs`` epochs; its per-epoch times and their median."""
    if not (src / "main.py").is_file() or not (src / "configs" / "overall.yaml").is_file():
        raise SystemExit(f"--reference-src {src}: not the reference's src folder (main.py, configs/overall.yaml)")
    override = {"epochs": epochs, "use_gpu": False, "data_path": f"{work}/", "inter_file_name": f"{name}.inter",
                "USER_ID_FIELD": "userID", "ITEM_ID_FIELD": "itemID", "field_separator": "\t",
                "vision_feature_file": "image_feat.npy", "text_feature_file": "text_feat.npy"}
    cmd = [python, "-c", LAUNCHER, str(threads), "main.py", "--model", "DGMRec", "--dataset", name,
           "--missing_modal", "1", "--new_items", "0", "--config_override", json.dumps(override)]
    started = time.time()
    proc = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
    logs = [p for p in (src / "log" / "DGMRec").glob(f"DGMRec-{name}-*.log") if p.stat().st_mtime >= started]
    text = max(logs, key=lambda p: p.stat().st_mtime).read_text() if logs else ""
    times, batch = epoch_times(text), BATCH_SIZE.search(text)
    if proc.returncode or len(times) < epochs:
        raise SystemExit(f"the reference run on {name} failed (exit code {proc.returncode}, {len(times)} of "
                         f"{epochs} epochs logged); its last output:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    steady = times[1:] if len(times) > 1 else times
    return {"epoch_s": times, "sec_per_epoch": statistics.median(steady),
            "batch_size": int(batch.group(1)) if batch else None}


def reference_commit(src: Path) -> str | None:
    proc = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def measure(src: Path, name: str, threads: int, epochs: int, work: Path | None = None, seed: int = 0,
            python: str = sys.executable) -> dict:
    """One reference record: export ``name`` (once, under ``work``, default ``WORK``) and time the reference on it."""
    work = (work or WORK) / (name if name == "ml100k" else f"{name}-seed{seed}")  # generated data: by seed
    folder = work / name
    if not folder.is_dir():  # exported whole into a new folder, then renamed: never a partial folder here
        partial = work / f".{name}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        export_mmrec(scenario_data(name, seed), partial, name)
        partial.rename(folder)
    result = run_reference(src, work, name, threads, epochs, python)
    log.info("reference code, %s, %d threads: %.2f s/epoch (epochs %s)", name, threads, result["sec_per_epoch"],
             ", ".join(f"{t:.1f}" for t in result["epoch_s"]))
    return {"kind": "training", "benchmark": "benchmarks/reference_speed.py", "dataset": name, "mode": MODE,
            "threads": threads, "processes": 1, "seed": seed, "device": "cpu", **result,
            "cpu_s_per_epoch": None, "peak_rss_mb": None, "recall@20": None,
            "reference_commit": reference_commit(src), "allocator": allocator(), "commit": code_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-src", type=Path, required=True, help="the reference checkout's src folder")
    parser.add_argument("--scenarios", nargs="+", default=["ml100k", "baby"], choices=["ml100k", "baby"])
    parser.add_argument("--threads", nargs="+", type=int, default=[2, 1])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (the first is not counted)")
    parser.add_argument("--work", type=Path, default=WORK, help="where the exported data sets are kept")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter that runs the reference (it needs torch, numpy, pandas, scipy, pyyaml)")
    parser.add_argument("--no-save", action="store_true", help="print only; do not merge into scale.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    src, work = args.reference_src.resolve(), args.work.resolve()
    records = [measure(src, name, threads, args.epochs, work, python=args.python)
               for name in args.scenarios for threads in args.threads]
    if not args.no_save:
        merge_records(records)


if __name__ == "__main__":
    main()
