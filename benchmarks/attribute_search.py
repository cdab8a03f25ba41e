"""Attribute search on the sample shop: does "a <colour> <category>" find a product with both attributes?

On the demo's index (3000-item sample shop, the compact open_clip encoder fine-tuned on the shop, DGMRec
trained on its interactions; built or reused through ``retrieval.demo.run.run_demo``), one text query per
(colour, category) pair present in the catalog, top 10 of the image index, scored with
:func:`benchmarks.attribute_eval.attribute_query_hit_rate` for each route of the engine:

- DGMRec-translated (text feature -> translator, mean preference, decoder -> image index),
- direct (the encoder's text vector straight into the image index, generated rows included),
- fused (normalised sum of both),
- and the encoder alone over the catalog's real images only (no generated rows), as a reference.

Writes ``benchmarks/RESULTS_attribute_search.md`` with the command and the date.

    python benchmarks/attribute_search.py
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dgmrec_core.atomic import atomic_write_text  # noqa: E402
from retrieval.catalog import load_catalog  # noqa: E402
from benchmarks.attribute_eval import attribute_query_hit_rate, direct_clip_query_fn  # noqa: E402
from retrieval.demo.run import run_demo  # noqa: E402
from retrieval.search.engine import SearchEngine  # noqa: E402
from retrieval.demo.showcase import encoder_note  # noqa: E402

ROUTES = (("auto (the route the build measured best)", "auto"), ("DGMRec-translated", "dgmrec"),
          ("direct (encoder text vector -> image index)", "direct"), ("fused (DGMRec + direct)", "fused"))


def matching_generated_share(engine: SearchEngine, catalog: Path) -> float:
    """Mean over (colour, category) queries of the share of matching items whose image is generated."""
    table = load_catalog(catalog, skip_bad=True)[0]
    generated = np.asarray(engine.bundle.generated["image"], dtype=bool)
    rows = np.asarray([engine.bundle.row_of(i) for i in table.item_ids])
    keys = np.asarray([f"{e['colour']}|{e['category']}" for e in table.extra])
    return float(np.mean([generated[rows[keys == key]].mean() for key in np.unique(keys)]))


def measure(engine: SearchEngine, catalog: Path, k: int) -> list[dict[str, Any]]:
    """Hit rate and precisions of each route, plus the share of generated entries in the top ``k``."""
    rows = []
    matching = matching_generated_share(engine, catalog)
    for label, route in ROUTES:
        generated: list[float] = []

        def query(text: str, route: str = route) -> list[str]:
            hits = engine.search_text(text, target="image", k=k, route=route)
            generated.append(float(np.mean([h.generated for h in hits])))
            return [h.item_id for h in hits]

        started = time.perf_counter()
        result = attribute_query_hit_rate(catalog, query, k=k)
        rows.append({"label": label, "route": route if route != "auto" else
                     f"auto ({engine.resolve_route('text', 'image', 'auto')})", **_summary(result),
                     "generated": float(np.mean(generated)), "generated_matching": matching,
                     "seconds": time.perf_counter() - started})
    started = time.perf_counter()
    result = attribute_query_hit_rate(catalog, direct_clip_query_fn(engine.encoder, catalog, k=k), k=k)
    rows.append({"label": "encoder alone, real catalog images only", "route": "real-images-only", **_summary(result),
                 "generated": 0.0, "generated_matching": matching, "seconds": time.perf_counter() - started})
    return rows


def personalised(engine: SearchEngine, shop: Path, k: int, n_users: int, seed: int = 0) -> dict[str, Any]:
    """For users with one or two preferred categories: queries anonymous and for the user. "a <colour>
    <category>": share of the top k with both attributes (must stay) and in the user's pattern (left open).
    "a <category>": share of the top k in the category (must stay) and in the user's colours (left open:
    personalisation may move toward them)."""
    table = load_catalog(shop / "catalog.csv", skip_bad=True)[0]
    attrs = {i: e for i, e in zip(table.item_ids, table.extra)}
    with open(shop / "users.csv", newline="") as handle:
        users = [u for u in csv.DictReader(handle) if u["user_id"] in set(engine.users())]
    rng = np.random.default_rng(seed)
    users = [users[i] for i in rng.permutation(len(users))[:n_users]]
    colours = sorted({e["colour"] for e in table.extra})
    out: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        out.setdefault(key, []).append(value)

    for user in users:
        liked = set(user["colours"].split("|"))
        for category in user["categories"].split("|"):
            colour = colours[int(rng.integers(len(colours)))]
            for mode, who, how in (("anonymous", None, "rerank"), ("personalised", user["user_id"], "rerank"),
                                   ("preference", user["user_id"], "preference")):
                got = [attrs[h.item_id] for h in engine.search_text(f"a {colour} {category}", k=k, user=who,
                                                                    personalise=how)]
                add(f"{mode}_match", np.mean([g["colour"] == colour and g["category"] == category for g in got]))
                add(f"{mode}_pattern", np.mean([g["pattern"] == user["pattern"] for g in got]))
                got = [attrs[h.item_id] for h in engine.search_text(f"a {category}", k=k, user=who, personalise=how)]
                add(f"{mode}_category_match", np.mean([g["category"] == category for g in got]))
                add(f"{mode}_user_colours", np.mean([g["colour"] in liked for g in got]))
    return {"users": len(users), "queries": len(out["anonymous_match"]),
            **{key: float(np.mean(v)) for key, v in out.items()}}


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("hit_rate", "precision", "colour_precision", "category_precision", "chance_hit_rate", "n_queries", "k")
    return {key: result[key] for key in keys}


def report(rows: list[dict[str, Any]], engine: SearchEngine, command: str, date: str, build_seconds: float) -> str:
    k = rows[0]["k"]
    generated = {m: float(engine.bundle.generated[m].mean()) for m in engine.modalities}
    lines = [
        "# Attribute search on the sample shop",
        "",
        f"Date: {date}. Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores shared with other jobs.",
        f"Index: {engine.bundle.folder} ({len(engine.bundle)} items, {len(engine.users())} users; image missing "
        f"for {generated['image']:.0%}, text for {generated['text']:.0%}, generated by DGMRec; best epoch "
        f"{engine.info.training.best_epoch}). Built or reused in {build_seconds:.0f} s.",
        f"Encoder: {encoder_note(engine.info.encoder)}.",
        "",
        f"One text query \"a <colour> <category>\" per (colour, category) pair in the catalog "
        f"({rows[0]['n_queries']} queries), top {k} of the image index. Hit rate: share of queries with at "
        f"least one product of that colour and category in the top {k} (the headline figure). Precision: "
        "mean share of the top k with both attributes (colour / category alone in the next columns). "
        "Generated: share of the top k whose image feature DGMRec generated (items with no photo).",
        "",
        f"| route | hit rate@{k} | precision@{k} | colour precision | category precision | generated in top {k} | "
        "generated among matching items |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | **{r['hit_rate']:.3f}** | {r['precision']:.3f} | {r['colour_precision']:.3f} | "
                     f"{r['category_precision']:.3f} | {r['generated']:.2f} | {r['generated_matching']:.2f} |")
    lines += ["", f"Chance hit rate (a random top {k} of the catalog): {rows[0]['chance_hit_rate']:.3f}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / ".cache/demo",
                        help="the demo's cache folder (default .cache/demo)")
    parser.add_argument("--index", type=Path, default=ROOT / "indexes/sample-shop",
                        help="the demo's index folder (default indexes/sample-shop)")
    parser.add_argument("--items", type=int, default=3000, help="sample shop size (default 3000)")
    parser.add_argument("--k", type=int, default=10, help="results per query (default 10)")
    parser.add_argument("--users", type=int, default=100, help="users in the personalised test (default 100)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/attribute_search.json")
    parser.add_argument("--date", default=time.strftime("%Y-%m-%d"), help="date written into the results (default today)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/RESULTS_attribute_search.md",
                        help="results file (default benchmarks/RESULTS_attribute_search.md)")
    args = parser.parse_args(argv)
    command = "python benchmarks/attribute_search.py" + (" " + shlex.join(argv if argv is not None else sys.argv[1:])
                                                         if (argv if argv is not None else sys.argv[1:]) else "")

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the build's progress messages
    started = time.perf_counter()
    built = run_demo(args.work, index_dir=args.index, n_items=args.items, encoder_mode="compact")
    build_seconds = time.perf_counter() - started
    engine = SearchEngine.load(built.index_dir)
    rows = measure(engine, built.catalog, args.k)
    person = personalised(engine, built.catalog.parent, args.k, args.users)
    for r in rows:
        print(f"{r['label']:45s} hit rate@{args.k} {r['hit_rate']:.3f}  precision {r['precision']:.3f}  "
              f"generated {r['generated']:.2f}  ({r['seconds']:.1f}s)")
    print(f"chance hit rate {rows[0]['chance_hit_rate']:.3f}, {rows[0]['n_queries']} queries")
    text = report(rows, engine, command, args.date, build_seconds)
    text += ("\n## Personalised search\n\n"
             f"For {person['users']} users, one query pair per category the user prefers ({person['queries']} each), "
             "anonymous and personalised (default: the user's DGMRec scores reorder the items matching the query). "
             "\"a <colour> <category>\" (colour drawn at random): share of the top "
             f"{args.k} with both attributes, and in the user's preferred pattern (left open). \"a <category>\": "
             "share in the category, and in the user's preferred colours (left open).\n\n"
             "| search | both attributes | user's pattern | category (\"a <category>\") | user's colours |\n"
             "|---|---:|---:|---:|---:|\n"
             + "".join(f"| {mode} | {person[mode + '_match']:.3f} | {person[mode + '_pattern']:.3f} | "
                       f"{person[mode + '_category_match']:.3f} | {person[mode + '_user_colours']:.3f} |\n"
                       for mode in ("anonymous", "personalised", "preference")))
    text += ("\n'personalised' is the default (`personalise=\"rerank\"`); 'preference' is the brief's query path "
             "(the user's modality preference inside the translated vector, `--personalise preference`), on the "
             "DGMRec-translated route when auto picks it.\n")
    atomic_write_text(args.out, text)
    records = [{"route": r["route"], "hit@10": r["hit_rate"], "colour_precision": r["colour_precision"],
                "category_precision": r["category_precision"], "generated_share_top10": r["generated"],
                "generated_share_matching": r["generated_matching"], "precision": r["precision"],
                "chance_hit_rate": r["chance_hit_rate"]} for r in rows]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps(records, indent=1) + "\n")
    atomic_write_text(args.json.with_name("personalised_search.json"), json.dumps(person, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
