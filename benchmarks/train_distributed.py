"""Data-parallel training under torchrun against one process: validation curves, wall time, memory.

    python benchmarks/train_distributed.py [--epochs 15] [--eval-every 3] [--processes 2] [--cores 2]
        [--baseline-threads 1] [--seed-spread 2025]

Trains (``--mode``, paper-exact by default) on the shared MovieLens data (2/3 missing, the shipped
mask) for a fixed number of epochs (no early stopping, same seed) twice on the same cores: one process
with ``--baseline-threads`` torch threads (default ``--cores``), then ``torchrun --nproc_per_node P`` with
``--cores / P`` threads each. Prints the two validation Recall@20 curves side by side, their largest
difference and the wall-time ratio, and merges one record per run into benchmarks/results/scale.json
(``scale_records.merge_records``). ``--seed-spread S`` also trains one process with seed S: how far two
seeds' curves are apart is the yardstick for the difference. The generation refit after training is off
(``gen_refit_steps`` 0): it changes no recommendation score.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.scale_records import merge_records  # noqa: E402

log = logging.getLogger("dgmrec.benchmark")
DATA = ROOT.parent / "shared/data/movielens100k-posters/mmrec"


def child(args: argparse.Namespace) -> None:
    """One run (a single process, or each rank under torchrun); rank 0 writes ``args.result``."""
    import torch

    from dgmrec_core import distributed
    from dgmrec_core.config import DGMRecConfig
    from dgmrec_core.mmrec import load_mmrec
    from dgmrec_core.trainer import fit

    torch.set_num_threads(args.threads)
    ctx = distributed.init("cpu")
    dataset = load_mmrec(args.data)
    config = replace(DGMRecConfig(), epochs=args.epochs, eval_every=args.eval_every, patience=10**6,
                     gen_refit_steps=0, seed=args.seed, training_mode=args.mode)
    t0 = time.perf_counter()
    result = fit(dataset, config, progress=False, device=ctx.device)
    wall = time.perf_counter() - t0
    rss = distributed.gather_objects(ctx, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if ctx.is_main:
        _write_result(args, ctx.world, wall, result, rss)
    distributed.shutdown()


def _write_result(args: argparse.Namespace, processes: int, wall: float, result: Any, rss: list[float]) -> None:
    """The run's figures (``result``: its TrainResult; ``rss``: every process's peak) into ``args.result``."""
    seconds = [h["seconds"] for h in result.history]
    out = {"processes": processes, "threads": args.threads, "seed": args.seed, "fit_wall_s": wall,
           "sec_per_epoch": statistics.median(seconds[1:] or seconds),
           "curve": [[h["epoch"], h["valid"]["recall@20"]] for h in result.history if "valid" in h],
           "peak_rss_mb": max(rss), "peak_rss_mb_all_processes": sum(rss), "recall@20": result.test["recall@20"]}
    Path(args.result).write_text(json.dumps(out))


def _launch(args: argparse.Namespace, processes: int, threads: int, result: Path, seed: int) -> dict:
    """Run the child in ``processes`` processes (torchrun when more than one); its result and wall time."""
    script = [str(Path(__file__).resolve()), "--child", "--result", str(result), "--data", str(args.data),
              "--epochs", str(args.epochs), "--eval-every", str(args.eval_every), "--seed", str(seed),
              "--threads", str(threads), "--mode", args.mode]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    cmd = (launcher if processes > 1 else [sys.executable]) + script
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    result.unlink(missing_ok=True)
    proc = subprocess.run(cmd, env=env, cwd=ROOT, check=False)
    if proc.returncode and not result.is_file():
        raise SystemExit(f"the {processes}-process run failed (exit {proc.returncode})")
    if proc.returncode:
        log.warning("the %d-process run exited with %d after writing its result", processes, proc.returncode)
    out = json.loads(result.read_text())
    out["process_wall_s"] = time.perf_counter() - t0
    return out


def _records(runs: list[dict], args: argparse.Namespace) -> list[dict]:
    return [{"kind": "training", "dataset": "ml100k", "mode": args.mode, "threads": r["threads"],
             "processes": r["processes"], "seed": r["seed"], "sec_per_epoch": round(r["sec_per_epoch"], 3),
             "peak_rss_mb": round(r["peak_rss_mb"]), "peak_rss_mb_all_processes": round(r["peak_rss_mb_all_processes"]),
             "recall@20": r["recall@20"], "curve": r["curve"], "epochs": args.epochs, "eval_every": args.eval_every,
             "fit_wall_s": round(r["fit_wall_s"], 1), "benchmark": "benchmarks/train_distributed.py"} for r in runs]


def report(one: dict, many: dict) -> str:
    """Markdown: the curves side by side, their largest difference, and the wall-time ratio."""
    diffs = [abs(a[1] - b[1]) for a, b in zip(one["curve"], many["curve"])]
    p = many["processes"]
    header = (f"| epoch | valid recall@20, 1 process x {one['threads']} threads | {p} processes x {many['threads']} "
              "threads | difference |")
    lines = [header, "|---|---|---|---|"]
    lines += [f"| {a[0]} | {a[1]:.4f} | {b[1]:.4f} | {b[1] - a[1]:+.4f} |" for a, b in zip(one["curve"], many["curve"])]
    ratio = many["fit_wall_s"] / one["fit_wall_s"]
    lines += ["", (f"max abs difference {max(diffs):.4f}; test recall@20 {one['recall@20']:.4f} vs "
                   f"{many['recall@20']:.4f}"),
              (f"s/epoch {one['sec_per_epoch']:.2f} vs {many['sec_per_epoch']:.2f}; training wall "
               f"{one['fit_wall_s']:.0f} s vs {many['fit_wall_s']:.0f} s: ratio ({p} processes / 1) {ratio:.2f}; "
               f"with start-up {one['process_wall_s']:.0f} s vs {many['process_wall_s']:.0f} s"),
              (f"peak RSS {one['peak_rss_mb']:.0f} MB vs {many['peak_rss_mb']:.0f} MB per process "
               f"({many['peak_rss_mb_all_processes']:.0f} MB all processes)")]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--eval-every", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--mode", choices=("paper-exact", "batch-local"), default="paper-exact",
                        help="training mode (DGMRecConfig.training_mode)")
    parser.add_argument("--processes", type=int, default=2, help="processes of the data-parallel run")
    parser.add_argument("--cores", type=int, default=2, help="torch threads in all, shared by the processes")
    parser.add_argument("--baseline-threads", type=int, help="threads of the 1-process run (default --cores)")
    parser.add_argument("--seed-spread", type=int, help="also train 1 process with this seed (the yardstick)")
    parser.add_argument("--no-record", action="store_true", help="do not merge into results/scale.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = ROOT / "benchmarks" / "results"
    single = args.baseline_threads or args.cores
    one = _launch(args, 1, single, work / ".train_distributed_1.json", args.seed)
    many = _launch(args, args.processes, max(1, args.cores // args.processes),
                   work / f".train_distributed_{args.processes}.json", args.seed)
    runs = [one, many]
    log.info("%s", report(one, many))
    if args.seed_spread is not None:
        other = _launch(args, 1, single, work / ".train_distributed_seed.json", args.seed_spread)
        spread = max(abs(a[1] - b[1]) for a, b in zip(one["curve"], other["curve"]))
        log.info("yardstick: 1 process, seed %d against seed %d: max abs difference %.4f; curve %s",
                 args.seed, args.seed_spread, spread, [round(v, 4) for _, v in other["curve"]])
        runs.append(other)
    for tmp in work.glob(".train_distributed_*.json"):
        tmp.unlink()
    if not args.no_record:
        merge_records(_records(runs, args))
        log.info("merged %d records into %s", len(runs), work / "scale.json")


if __name__ == "__main__":
    main()
