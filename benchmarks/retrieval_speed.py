"""Retrieval speed: exact vs approximate FAISS search, and translation + search, at catalog scale.

For each size: clustered unit vectors (a Gaussian mixture of a few thousand centres, each cluster
spread along its own low-rank directions plus isotropic noise, so approximate search faces a
realistic neighbour structure rather than uniform noise), then for the exact index and the
approximate one: build time, resident-memory growth, single-query latency p50/p99, recall@10 against
exact; and the latency of "translation + search", where translation is ``translate_fn`` applied to
one raw query feature. By default ``translate_fn`` is ``make_query_path``: DGMRec's own query path,
untrained (DESIGN.md section 3).

Run: python benchmarks/retrieval_speed.py [--sizes 10000 100000 1000000] [--dim 512]
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dgmrec_core.config import DGMRecConfig  # noqa: E402
from dgmrec_core.data import Dataset, Modality  # noqa: E402
from dgmrec_core.interactions import build_interactions  # noqa: E402
from dgmrec_core.model import DGMRec  # noqa: E402
from retrieval.index.vectors import VectorIndex  # noqa: E402

TranslateFn = Callable[[np.ndarray], np.ndarray]
K = 10


def clustered_unit_vectors(n: int, d: int, *, centres: int = 2000, rank: int = 32, seed: int = 0,
                           chunk: int = 100_000) -> np.ndarray:
    """``n`` unit vectors from a mixture of ``centres`` clusters with uneven sizes and spreads.

    Point = centre + spread * (z @ basis) * signs_c + isotropic noise, normalised: z is rank-``rank``
    Gaussian, ``signs_c`` a random +-1 pattern per cluster that gives each cluster its own directions.
    """
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((centres, d), dtype=np.float32)
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    basis = rng.standard_normal((rank, d), dtype=np.float32) / np.float32(np.sqrt(d * rank))
    signs = np.where(rng.random((centres, d)) < 0.5, -1, 1).astype(np.float32)
    spread = rng.uniform(0.6, 1.4, centres).astype(np.float32)
    weights = rng.dirichlet(np.full(centres, 2.0))
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        lab = rng.choice(centres, e - s, p=weights)
        x = rng.standard_normal((e - s, d), dtype=np.float32) * np.float32(0.3 / np.sqrt(d))
        x += (rng.standard_normal((e - s, rank), dtype=np.float32) @ basis) * signs[lab]
        x *= spread[lab][:, None]
        x += mu[lab]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:e] = x
    return out


def make_query_path(d_in: int, d_out: int, seed: int = 0) -> TranslateFn:
    """DGMRec's own query path (``DGMRec.query_to_modality``, DESIGN.md section 3) with the default
    configuration, untrained, attached to a small random catalog: only the cost matters here."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_users, n_items = 16, 64
    users, items = np.repeat(np.arange(n_users), 8), rng.integers(0, n_items, size=8 * n_users)
    inter = build_interactions(users.astype(str), items.astype(str), seed=seed,
                               item_ids=[str(i) for i in range(n_items)])
    modalities = [Modality(name, rng.normal(size=(n_items, dim)).astype(np.float32), np.ones(n_items, dtype=bool))
                  for name, dim in (("query", d_in), ("index", d_out))]
    model = DGMRec(DGMRecConfig(), n_users, n_items, [d_in, d_out], ["query", "index"])
    model.attach(Dataset(inter, modalities, name="speed"))
    model.eval()

    @torch.inference_mode()
    def translate(x: np.ndarray) -> np.ndarray:
        return model.query_to_modality(0, 1, torch.from_numpy(np.asarray(x, dtype=np.float32).reshape(-1, d_in))).numpy()

    return translate


def rss_mb() -> float:
    """Resident set size of this process in MiB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def latencies_ms(fn: Callable[[np.ndarray], object], queries: np.ndarray, desc: str) -> np.ndarray:
    """Wall time of ``fn`` on each query alone (after 5 warm-up calls), in milliseconds."""
    for q in queries[:5]:
        fn(q[None])
    out = np.empty(len(queries))
    for i, q in enumerate(tqdm(queries, desc=desc, leave=False)):
        t = time.perf_counter()
        fn(q[None])
        out[i] = (time.perf_counter() - t) * 1e3
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2).sum()
    return float(hits / truth.size)


def bench_size(n: int, dim: int, *, n_queries: int, approx: str, translate_fn: TranslateFn,
               d_in: int, seed: int, nprobes: list[int] | None, ef_searches: list[int] | None) -> list[dict]:
    """Exact index first (its answers are the ground truth), then the approximate one, timed once per
    search setting in ``nprobes`` (IVF) or ``ef_searches`` (HNSW), or at its defaults."""
    t = time.perf_counter()
    data = clustered_unit_vectors(n + n_queries, dim, seed=seed)
    base, queries = data[:n], data[n:]
    raw_queries = np.random.default_rng(seed + 1).standard_normal((n_queries, d_in)).astype(np.float32)
    print(f"[n={n:,}] generated {n + n_queries:,} x {dim} vectors in {time.perf_counter() - t:.1f} s",
          file=sys.stderr)
    rows, truth = [], None
    for kind in ("flat", approx):
        gc.collect()
        before = rss_mb()
        t = time.perf_counter()
        index = VectorIndex.build(base, kind=kind, seed=seed)
        build_s = time.perf_counter() - t
        memory = rss_mb() - before
        settings = [{}] if kind == "flat" else (
            [{"nprobe": v} for v in nprobes or ()] + [{"ef_search": v} for v in ef_searches or ()] or [{}])
        for setting in settings:
            index.set_search_params(**setting)
            found = index.search(queries, K)[1]
            if truth is None:
                truth = found
            search = latencies_ms(lambda q: index.search(q, K), queries, f"{kind} search")
            # exact translate+search is exact search + translation alone: not timed, to spare the cores
            full = (np.full(1, np.nan) if kind == "flat" else
                    latencies_ms(lambda r: index.search(translate_fn(r), K), raw_queries, f"{kind} translate+search"))
            params = ", ".join(f"{k} {v}" for k, v in index.params.items())
            rows.append({"size": n, "kind": f"{kind} ({params})" if params else kind, "build_s": build_s,
                         "memory_mb": memory, "p50": np.percentile(search, 50), "p99": np.percentile(search, 99),
                         "tp50": np.percentile(full, 50), "tp99": np.percentile(full, 99),
                         "recall": recall_at_k(found, truth)})
        del index
    return rows


def _ms(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.3f}"


def print_tables(rows: list[dict], translate_ms: np.ndarray) -> None:
    print("| size | kind | build s | memory MB | p50 ms | p99 ms | recall@10 | translate+search p50 ms "
          "| translate+search p99 ms |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']:,} | {r['kind']} | {r['build_s']:.2f} | {r['memory_mb']:.0f} | {r['p50']:.3f} "
              f"| {r['p99']:.3f} | {r['recall']:.4f} | {_ms(r['tp50'])} | {_ms(r['tp99'])} |")
    print(f"\ntranslation alone (query path, one query): p50 {np.percentile(translate_ms, 50):.3f} ms, "
          f"p99 {np.percentile(translate_ms, 99):.3f} ms")
    print("\n| size | approximate index | search p50 speedup vs exact | build time vs exact |")
    print("|---:|---|---:|---:|")
    exact = {r["size"]: r for r in rows if r["kind"] == "flat"}
    for r in rows:
        if r["kind"] != "flat":
            e = exact[r["size"]]
            print(f"| {r['size']:,} | {r['kind']} | {e['p50'] / r['p50']:.1f}x "
                  f"| {r['build_s'] / max(e['build_s'], 1e-9):.1f}x |")


def run(sizes: list[int], dim: int, *, n_queries: int = 500, approx: str = "ivf",
        translate_fn: TranslateFn | None = None, d_in: int | None = None, seed: int = 0,
        nprobes: list[int] | None = None, ef_searches: list[int] | None = None) -> list[dict]:
    """Benchmark every size and print the tables. ``translate_fn`` maps one raw query (1, d_in) to the
    index space (1, dim); by default ``make_query_path(d_in, dim)``."""
    d_in = d_in or dim
    translate_fn = translate_fn or make_query_path(d_in, dim)
    raw = np.random.default_rng(seed).standard_normal((n_queries, d_in)).astype(np.float32)
    translate_ms = latencies_ms(translate_fn, raw, "translate")
    rows = []
    for n in sizes:
        rows += bench_size(n, dim, n_queries=n_queries, approx=approx, translate_fn=translate_fn, d_in=d_in,
                           seed=seed, nprobes=nprobes, ef_searches=ef_searches)
    print_tables(rows, translate_ms)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=512, help="index (and query feature) dimension")
    p.add_argument("--queries", type=int, default=500, help="single queries timed per index")
    p.add_argument("--approx", choices=["ivf", "hnsw"], default="ivf", help="approximate index kind")
    p.add_argument("--nprobe", type=int, nargs="+", help="IVF lists probed, one timing per value "
                   "(default: the index's own)")
    p.add_argument("--ef-search", type=int, nargs="+", help="HNSW efSearch, one timing per value "
                   "(default: the index's own)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(f"retrieval_speed: sizes {args.sizes}, dim {args.dim}, {args.queries} queries, "
          f"approx {args.approx}, torch {torch.__version__}, {torch.get_num_threads()} torch threads",
          file=sys.stderr)
    run(args.sizes, args.dim, n_queries=args.queries, approx=args.approx, seed=args.seed,
        nprobes=args.nprobe, ef_searches=args.ef_search)


if __name__ == "__main__":
    main()
