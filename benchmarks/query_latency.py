"""End-to-end query latency through the real engine: open_clip text tower + DGMRec translation + FAISS.

    python benchmarks/query_latency.py --index indexes/sample-shop [--queries 200]

Times single queries (p50/p99) on a built index for each route, split into the encoder's text tower,
the translation (query_to_modality) and the index search; also the text tower of ViT-B-32 (random
weights: the same compute as the pretrained model) to show what a full-size encoder adds.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrieval.encode.clip import ClipEncoder  # noqa: E402
from retrieval.search.engine import SearchEngine  # noqa: E402

WORDS = ["red", "blue", "green", "striped", "dotted", "mug", "lamp", "chair", "bag", "shoe", "hat", "bottle"]


def percentiles(samples: list[float]) -> str:
    a = np.asarray(samples) * 1000
    return f"p50 {np.percentile(a, 50):7.2f} ms   p99 {np.percentile(a, 99):7.2f} ms"


def timed(fn, queries: list[str]) -> list[float]:
    fn(queries[0])  # warm-up
    out = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=ROOT / "indexes" / "sample-shop")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    queries = [" ".join(rng.choice(WORDS, size=3)) for _ in range(args.queries)]
    engine = SearchEngine.load(args.index)
    print(f"index {args.index}: {len(engine.bundle.item_ids)} items; encoder {engine.encoder.model_name}")
    tower = timed(lambda q: engine.encoder.encode_texts([q]), queries)
    print(f"{'text tower (index encoder)':<42} {percentiles(tower)}")
    x = engine.encoder.encode_texts(queries[:1])
    for route in ("dgmrec", "direct"):
        try:
            path = timed(lambda q: engine.bundle.search("image", engine.query_vector("text", x, "image", route=route), 10),
                         queries)
        except ValueError as exc:
            print(f"route {route}: {exc}")
            continue
        full = timed(lambda q: engine.search_text(q, target="image", k=10, route=route), queries)
        print(f"{'translation + search, route ' + route:<42} {percentiles(path)}")
        print(f"{'text tower + translation + search, ' + route:<42} {percentiles(full)}")
    big = ClipEncoder("ViT-B-32", None, seed=0)
    print(f"{'text tower ViT-B-32 (for scale)':<42} {percentiles(timed(lambda q: big.encode_texts([q]), queries[:50]))}")


if __name__ == "__main__":
    main()
