"""What one ``add-items`` costs: bytes written and wall time of appending a few items to a large bundle.

Builds (once per work folder) a bundle of N items with two 512-d modalities ("image", "text") and a 65-d
fused index of kind ``--kind`` (seeded Gaussian vectors), then appends ``--add`` items ``--appends`` times.
For each append: wall seconds of ``IndexBundle.add_items``, and the bytes written, counted as the sizes of
the files of the new version folder that are not hard links to the previous version's (a file the
append rewrote, or a new one), with their number. Then the seconds to load the bundle. Only the API
that bundles of format 1 and 2 share is used, so the same script measures the code before segments:

    .venv/bin/python benchmarks/append_cost.py --n 200000 --work /tmp/append_cost           # this tree
    git worktree add /tmp/dgmrec_old 803080e
    PYTHONPATH=/tmp/dgmrec_old .venv/bin/python benchmarks/append_cost.py --n 200000 --work /tmp/append_old
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

if not any(Path(p, "retrieval").is_dir() for p in sys.path if p):  # run from a checkout without PYTHONPATH
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from retrieval.index.bundle import IndexBundle  # noqa: E402

log = logging.getLogger("append_cost")
DIMS = {"image": 512, "text": 512}
FUSED_DIM = 65
CHUNK = 50_000


def rows(n: int, start: int, seed: int) -> dict:
    """Seeded items ``start`` .. ``start + n - 1``: ids, both modalities, generated flags, fused vectors."""
    rng = np.random.default_rng(seed)
    return {"item_ids": [f"item{start + i}" for i in range(n)],
            "modality_vectors": {m: rng.standard_normal((n, d), dtype=np.float32) for m, d in DIMS.items()},
            "generated": {m: rng.random(n) < 0.3 for m in DIMS},
            "fused": rng.standard_normal((n, FUSED_DIM), dtype=np.float32)}


def build(folder: Path, n: int, kind: str) -> float:
    t0 = time.perf_counter()
    IndexBundle.build(folder, **rows(n, 0, 0), model_fingerprint="m", encoder_fingerprint="e", kind=kind,
                      items={"text": [f"item {i}" for i in range(n)]})
    return time.perf_counter() - t0


def written(before: Path, after: Path) -> tuple[int, int]:
    """Bytes and number of the files of ``after`` that are not hard links to files of ``before``."""
    old = {p.stat().st_ino for p in before.iterdir()} if before.is_dir() else set()
    new = [p for p in after.iterdir() if p.is_file() and p.stat().st_ino not in old]
    return sum(p.stat().st_size for p in new), len(new)


def append(folder: Path, n_items: int, start: int) -> dict:
    bundle = IndexBundle.load(folder)
    before = folder.resolve()
    payload = rows(n_items, start, start)
    t0 = time.perf_counter()
    bundle.add_items(payload["item_ids"], payload["modality_vectors"], payload["generated"], payload["fused"],
                     items={"text": [f"item {i}" for i in payload["item_ids"]]})
    seconds = time.perf_counter() - t0
    size, count = written(before, folder.resolve())
    return {"seconds": seconds, "bytes_written": size, "files_written": count,
            "bundle_bytes": sum(p.stat().st_size for p in folder.resolve().iterdir())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000, help="items in the bundle before the appends")
    p.add_argument("--add", type=int, default=100, help="items per append")
    p.add_argument("--appends", type=int, default=3, help="appends measured, one after another")
    p.add_argument("--kind", default="flat", help="index kind of the bundle")
    p.add_argument("--work", type=Path, required=True, help="folder for the bundle (reused when built before)")
    p.add_argument("--json", type=Path, help="write the records here too")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = args.work / "indexes" / f"append_{args.n}_{args.kind}"
    shutil.rmtree(args.work / "indexes", ignore_errors=True)  # every run starts from a fresh build
    log.info("building %s: %d items, %s, kind %s", folder, args.n, DIMS, args.kind)
    build_seconds = build(folder, args.n, args.kind)
    records = []
    for i in range(args.appends):
        record = append(folder, args.add, args.n + i * args.add)
        records.append(record)
        log.info("append %d of %d items: %.2f s, %d bytes in %d new files (bundle %d bytes)", i + 1, args.add,
                 record["seconds"], record["bytes_written"], record["files_written"], record["bundle_bytes"])
    t0 = time.perf_counter()
    loaded = IndexBundle.load(folder)
    load_seconds = time.perf_counter() - t0
    summary = {"n": args.n, "add": args.add, "kind": args.kind, "build_seconds": build_seconds,
               "median_seconds": statistics.median(r["seconds"] for r in records),
               "median_bytes_written": statistics.median(r["bytes_written"] for r in records),
               "load_seconds": load_seconds, "items_after": len(loaded), "appends": records}
    log.info("median append: %.2f s, %d bytes written; load after the appends: %.2f s",
             summary["median_seconds"], summary["median_bytes_written"], load_seconds)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
