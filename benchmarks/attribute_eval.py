"""Attribute query benchmark: does a query "a <colour> <category>" find products with both attributes?

Works on any catalog with ``colour`` and ``category`` columns (the sample shop has them), and on any
search route given as ``query_fn(text) -> ranked item ids``, so direct CLIP search and DGMRec-translated
search are measured the same way.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from math import comb
from pathlib import Path
from typing import Any

import numpy as np

from dgmrec_core.errors import DataError
from retrieval.catalog import load_catalog
from retrieval.encode.clip import Encoder

QueryFn = Callable[[str], Sequence[str]]


def attribute_query_hit_rate(catalog_csv: str | Path, query_fn: QueryFn, k: int = 10,
                             template: str = "a {colour} {category}") -> dict[str, Any]:
    """Run one query per (colour, category) pair present in the catalog and score the top ``k`` ids.

    Returns ``hit_rate`` (share of queries with at least one item matching both attributes in the top
    ``k``), ``precision`` (mean share of the top ``k`` matching both), ``colour_precision`` and
    ``category_precision`` (one attribute each), ``chance_hit_rate`` (the hit rate of a uniformly random
    ranking of the whole catalog), ``n_queries``, ``k`` and ``per_query`` details.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    catalog, _ = load_catalog(catalog_csv, skip_bad=True)
    attrs: dict[str, tuple[str, str]] = {}
    for item_id, extra in zip(catalog.item_ids, catalog.extra):
        for name in ("colour", "category"):
            if not str(extra.get(name) or "").strip():
                raise DataError(catalog.source, f"item {item_id!r} has no {name}", field=name)
        attrs[item_id] = (str(extra["colour"]).strip(), str(extra["category"]).strip())

    pairs = sorted(set(attrs.values()))
    n_items = len(attrs)
    per_query = []
    for colour, category in pairs:
        query = template.format(colour=colour, category=category)
        top = list(query_fn(query))[:k]
        unknown = [i for i in top if i not in attrs]
        if unknown:
            raise ValueError(f"query_fn returned ids not in {catalog.source}: {unknown[:5]}")
        got = [attrs[i] for i in top]
        n_match = sum(g == (colour, category) for g in got)
        n_relevant = sum(a == (colour, category) for a in attrs.values())
        per_query.append({
            "query": query, "colour": colour, "category": category, "hit": n_match > 0,
            "precision": n_match / k,
            "colour_precision": sum(g[0] == colour for g in got) / k,
            "category_precision": sum(g[1] == category for g in got) / k,
            "chance_hit": 1 - comb(n_items - n_relevant, k) / comb(n_items, k) if k <= n_items else 1.0,
            "top": top,
        })

    def mean(key: str) -> float:
        return float(np.mean([q[key] for q in per_query]))

    return {"k": k, "n_queries": len(per_query), "hit_rate": mean("hit"), "precision": mean("precision"),
            "colour_precision": mean("colour_precision"), "category_precision": mean("category_precision"),
            "chance_hit_rate": mean("chance_hit"), "per_query": per_query}


def direct_clip_query_fn(encoder: Encoder, catalog_csv: str | Path, k: int = 10) -> QueryFn:
    """Direct route: the query's text vector against every catalog image by cosine, best ``k`` ids.

    Encodes the catalog's images once; items without an image are not searchable by this route.
    """
    catalog, _ = load_catalog(catalog_csv, skip_bad=True)
    rows = np.flatnonzero(catalog.has_image)
    ids = [catalog.item_ids[i] for i in rows]
    image_feats = encoder.encode_images([catalog.image_paths[i] for i in rows])

    def query(text: str) -> list[str]:
        scores = image_feats @ encoder.encode_texts([text])[0]
        top = np.argsort(-scores, kind="stable")[:k]
        return [ids[i] for i in top]

    return query
