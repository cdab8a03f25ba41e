"""Indexes at scale (issue 13): build, memory, latency and recall of one ``VectorIndex`` over N generated vectors.

Steps, each timed: (1) generate N clustered 512-d unit vectors in chunks (seeded Gaussian mixture, the
recipe of ``retrieval_speed.clustered_unit_vectors``: uneven cluster weights and spreads, each cluster
spread along low-rank directions of its own plus isotropic noise), written as float16 to
``<work>/data.npy`` with plain writes, and held-out queries from the same mixture; (2) in a child
process, build the index from the memory-mapped data and save it (build seconds, peak RSS); (3) in
another child, load the index and time single queries (peak RSS of a process that only loads and
searches), first with the index's full-vector file dropped from the page cache (``posix_fadvise``),
then again warm; (4) exact top-10 by brute force over the data in chunks for a sample of queries, and
recall@10 of the index against it. Records go to benchmarks/results/scale.json (kind "index").

    nice -n 10 .venv/bin/python benchmarks/index_scale.py --n 10000000 --work /tmp/index_scale
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.scale_records import merge_records
from retrieval.index.compressed import sidecar

log = logging.getLogger("index_scale")
K = 10
CHUNK = 100_000


def mixture(d: int, centres: int, rank: int, seed: int) -> dict[str, np.ndarray]:
    """The mixture's parameters: centres, a shared low-rank basis, per-cluster sign patterns, spreads, weights."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((centres, d), dtype=np.float32)
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    return {"mu": mu,
            "basis": rng.standard_normal((rank, d), dtype=np.float32) / np.float32(np.sqrt(d * rank)),
            "signs": np.where(rng.random((centres, d)) < 0.5, -1, 1).astype(np.float32),
            "spread": rng.uniform(0.6, 1.4, centres).astype(np.float32),
            "weights": rng.dirichlet(np.full(centres, 2.0))}


def draw(m: dict[str, np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit vectors (float32) from the mixture ``m``."""
    d, rank = m["mu"].shape[1], m["basis"].shape[0]
    lab = rng.choice(len(m["mu"]), n, p=m["weights"])
    x = rng.standard_normal((n, d), dtype=np.float32) * np.float32(0.3 / np.sqrt(d))
    x += (rng.standard_normal((n, rank), dtype=np.float32) @ m["basis"]) * m["signs"][lab]
    x *= m["spread"][lab][:, None]
    x += m["mu"][lab]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_npy(path: Path, shape: tuple[int, int], blocks) -> None:
    """Write float16 ``blocks`` (in order) as one .npy of ``shape`` with plain writes (no memory map)."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f2", "fortran_order": False, "shape": shape})
        f.writelines(np.ascontiguousarray(block, dtype=np.float16).tobytes() for block in blocks)
    os.replace(tmp, path)


def generate(work: Path, n: int, d: int, n_queries: int, centres: int, rank: int, seed: int) -> float:
    """Write ``data.npy`` (n, d) and ``queries.npy`` unless both exist with these shapes; returns seconds."""
    data, queries = work / "data.npy", work / "queries.npy"
    if data.exists() and queries.exists() and np.load(data, mmap_mode="r").shape == (n, d) \
            and np.load(queries, mmap_mode="r").shape == (n_queries, d):
        log.info("reusing %s", data)
        return 0.0
    start = time.perf_counter()
    m = mixture(d, centres, rank, seed)
    seeds = np.random.SeedSequence(seed).spawn(n // CHUNK + 2)
    write_npy(queries, (n_queries, d), [draw(m, n_queries, np.random.default_rng(seeds[-1]))])
    blocks = (draw(m, min(CHUNK, n - s), np.random.default_rng(seeds[i]))
              for i, s in enumerate(range(0, n, CHUNK)))
    write_npy(data, (n, d), tqdm(blocks, total=-(-n // CHUNK), desc="generating", unit="chunk"))
    return time.perf_counter() - start


class MemoryWatch:
    """Peak anonymous resident memory (RssAnon, sampled every 0.2 s) and the kernel's peak RSS (VmHWM)."""

    def __init__(self) -> None:
        self.peak_anon_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_anon_kb = max(self.peak_anon_kb, self.status("RssAnon"))

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self.peak_anon_kb = max(self.peak_anon_kb, self.status("RssAnon"))
        return {"peak_rss_mb": round(self.status("VmHWM") / 1024, 1),
                "peak_anon_mb": round(self.peak_anon_kb / 1024, 1)}


def phase_build(args: argparse.Namespace) -> dict:
    """Child process: build the index from the memory-mapped data and save it."""
    from retrieval.index.vectors import VectorIndex
    watch = MemoryWatch()
    data = np.load(args.work / "data.npy", mmap_mode="r")
    start = time.perf_counter()
    index = VectorIndex.build(data, kind=args.kind, nlist=args.nlist, seed=args.seed)
    build_s = time.perf_counter() - start
    path = args.work / "index" / "v.faiss"
    path.parent.mkdir(exist_ok=True)
    for old in (path, sidecar(path)):  # a previous run's files (of another kind) must not be counted
        old.unlink(missing_ok=True)
    index.save(path)
    save_s = time.perf_counter() - start - build_s
    files = [path, sidecar(path)]
    return {"build_seconds": round(build_s, 1), "save_seconds": round(save_s, 1), "kind_built": index.kind,
            "params": index.params, "index_file_mb": round(path.stat().st_size / 2**20, 1),
            "disk_mb": round(sum(p.stat().st_size for p in files if p.exists()) / 2**20, 1),
            **{f"build_{k}": v for k, v in watch.stop().items()}}


def drop_cache(path: Path) -> None:
    """Evict ``path``'s pages from the page cache (no root needed), so reads go to the disk."""
    if path.exists():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # pages written but not yet on disk are not evicted
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed_pass(index, queries: np.ndarray, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Each query alone: latencies (ms) and top-K rows."""
    times, rows = np.empty(len(queries)), np.empty((len(queries), K), np.int64)
    for i, q in enumerate(tqdm(queries, desc=desc, leave=False)):
        t = time.perf_counter()
        rows[i] = index.search(q[None], K)[1][0]
        times[i] = (time.perf_counter() - t) * 1e3
    return times, rows


def phase_search(args: argparse.Namespace) -> dict:
    """Child process: load the index, time single queries cold (full vectors not cached) and warm."""
    from retrieval.index.vectors import VectorIndex
    path = args.work / "index" / "v.faiss"
    drop_cache(sidecar(path))
    watch = MemoryWatch()
    start = time.perf_counter()
    index = VectorIndex.load(path)
    load_s = time.perf_counter() - start
    if args.nprobe or args.rerank:
        index.set_search_params(nprobe=args.nprobe, rerank=args.rerank)
    queries = np.load(args.work / "queries.npy").astype(np.float32)
    cold, rows = timed_pass(index, queries, "queries (cold)")
    warm, _ = timed_pass(index, queries, "queries (warm)")
    np.save(args.work / "found.npy", rows)
    pct = {f"{name}_{p}_ms": round(float(np.percentile(t, q)), 3)
           for name, t in (("cold", cold), ("warm", warm)) for p, q in (("p50", 50), ("p99", 99))}
    return {"load_seconds": round(load_s, 1), "search_params": index.params, **pct, **watch.stop()}


def exact_top_k(work: Path, queries: np.ndarray) -> tuple[np.ndarray, float]:
    """Exact top-K rows of ``queries`` by brute force over ``data.npy`` in chunks; also seconds taken."""
    data = np.load(work / "data.npy", mmap_mode="r")
    start = time.perf_counter()
    best_s = np.full((len(queries), K), -np.inf, np.float32)
    best_r = np.zeros((len(queries), K), np.int64)
    for s in tqdm(range(0, len(data), 4 * CHUNK), desc="exact search", unit="chunk"):
        scores = queries @ np.asarray(data[s:s + 4 * CHUNK], dtype=np.float32).T
        top = np.argpartition(-scores, K - 1, axis=1)[:, :K] if scores.shape[1] > K else \
            np.broadcast_to(np.arange(scores.shape[1]), (len(queries), scores.shape[1]))
        all_s = np.concatenate([best_s, np.take_along_axis(scores, top, axis=1)], axis=1)
        all_r = np.concatenate([best_r, top + s], axis=1)
        keep = np.argsort(-all_s, axis=1, kind="stable")[:, :K]
        best_s, best_r = np.take_along_axis(all_s, keep, axis=1), np.take_along_axis(all_r, keep, axis=1)
    return best_r, time.perf_counter() - start


def cached_truth(work: Path, queries: np.ndarray) -> tuple[np.ndarray, float]:
    """``exact_top_k``, kept in ``<work>/truth.npz`` for reruns on the same data and queries."""
    cache = work / "truth.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            if z["truth"].shape == (len(queries), K) and np.array_equal(z["queries"], queries):
                return z["truth"], float(z["seconds"])
    truth, seconds = exact_top_k(work, queries)
    np.savez(cache, truth=truth, queries=queries, seconds=seconds)
    return truth, seconds


def child(args: argparse.Namespace, phase: str) -> dict:
    """Run ``phase`` in a fresh process (its own peak RSS) and return its JSON result."""
    out = args.work / f"{phase}.json"
    cmd = [sys.executable, __file__, "--phase", phase, "--out", str(out), *args.passthrough]
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def run(args: argparse.Namespace) -> dict:
    """Every step for one size; returns the record (also merged into scale.json unless ``--no-record``)."""
    args.work.mkdir(parents=True, exist_ok=True)
    gen_s = generate(args.work, args.n, args.dim, args.queries, args.centres, args.rank, args.seed)
    built = json.loads((args.work / "build.json").read_text()) if args.reuse_index else child(args, "build")
    log.info("build: %s", built)
    searched = child(args, "search")
    log.info("search: %s", searched)
    queries = np.load(args.work / "queries.npy").astype(np.float32)[:args.recall_queries]
    truth, exact_s = cached_truth(args.work, queries)
    found = np.load(args.work / "found.npy")[:args.recall_queries]
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2).sum()
    record = {"kind": "index", "dataset": f"generated-{label(args.n)}-{args.dim}d", "index": built["kind_built"],
              "threads": args.threads, "n": args.n, "dim": args.dim,
              "build_seconds": built["build_seconds"], "peak_rss_mb": searched["peak_rss_mb"],
              "p50_ms": searched["cold_p50_ms"], "p99_ms": searched["cold_p99_ms"],
              "recall@10": round(float(hits / truth.size), 4),
              "warm_p50_ms": searched["warm_p50_ms"], "warm_p99_ms": searched["warm_p99_ms"],
              "search_peak_anon_mb": searched["peak_anon_mb"], "load_seconds": searched["load_seconds"],
              **{k: built[k] for k in ("save_seconds", "build_peak_rss_mb", "build_peak_anon_mb",
                                       "index_file_mb", "disk_mb")},
              "params": searched["search_params"], "latency_queries": args.queries,
              "recall_queries": len(queries), "chance_recall@10": K / args.n,
              "exact_batched_ms_per_query": round(exact_s * 1e3 / len(queries), 1),
              "generate_seconds": round(gen_s, 1), "search_threads": 1,
              "data": f"mixture of {args.centres} Gaussians, rank {args.rank}, seed {args.seed}, float16 on disk"}
    log.info("record: %s", json.dumps(record))
    if not args.no_record:
        merge_records([record])
    return record


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000_000, help="vectors to index")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--work", type=Path, default=Path("/tmp/index_scale"), help="folder for data and index")
    p.add_argument("--kind", default="auto", help="VectorIndex kind")
    p.add_argument("--nlist", type=int, default=None)
    p.add_argument("--nprobe", type=int, default=None, help="search-time lists probed (default: the index's)")
    p.add_argument("--rerank", type=int, default=None, help="ivfpq candidates re-ranked (default: the index's)")
    p.add_argument("--queries", type=int, default=1000, help="single queries timed")
    p.add_argument("--recall-queries", type=int, default=100, help="queries checked against exact search")
    p.add_argument("--centres", type=int, default=2000)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="cores the build may use (search uses one)")
    p.add_argument("--reuse-index", action="store_true", help="search the index of the last run in --work again")
    p.add_argument("--no-record", action="store_true", help="do not write benchmarks/results/scale.json")
    p.add_argument("--cleanup", action="store_true", help="delete the work folder at the end")
    p.add_argument("--phase", choices=["build", "search"], help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    raw = list(sys.argv[1:] if argv is None else argv)
    args.passthrough = [a for i, a in enumerate(raw) if a not in ("--phase", "--out")
                        and (i == 0 or raw[i - 1] not in ("--phase", "--out"))]
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse(argv)
    if args.phase == "build" and hasattr(os, "sched_setaffinity"):  # searches use one FAISS thread anyway
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:max(1, args.threads)])
    if args.phase:
        result = (phase_build if args.phase == "build" else phase_search)(args)
        args.out.write_text(json.dumps(result))
        return
    try:
        run(args)
    finally:
        if args.cleanup:
            for p in sorted(args.work.rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
            args.work.rmdir()


if __name__ == "__main__":
    main()
