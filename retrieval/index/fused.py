"""Fused embeddings in a cosine index without changing the ranking: the dot-product-to-cosine reduction.

DGMRec scores user u and item i by the dot product u . i, while ``VectorIndex`` ranks by cosine. Each
item vector gets one extra coordinate so that every item has the same length R (a bound on the norms):
i' = [i, sqrt(R^2 - |i|^2)] / R, and a query is u' = [u, 0]. Then cos(u', i') = u . i / (|u| R), which
orders items exactly as u . i, and the dot product is recovered as cos * |u| * R. R is set at build
time with headroom (``HEADROOM``) for items added later; a later item longer than R is shortened to R
(its score is then slightly underestimated).
"""
from __future__ import annotations

import numpy as np

HEADROOM = 2.0


def radius_for(items: np.ndarray) -> float:
    """The bound R for item embeddings ``items`` (n, d): HEADROOM times their largest norm."""
    norms = np.linalg.norm(np.asarray(items, dtype=np.float64), axis=1)
    return float(HEADROOM * max(norms.max(initial=0.0), 1e-6))


def augment_items(items: np.ndarray, radius: float) -> np.ndarray:
    """Items (n, d) -> unit vectors (n, d + 1) whose cosine with ``augment_queries`` ranks by dot product."""
    x = np.asarray(items, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.where(norms > radius, x * (radius / np.maximum(norms, 1e-12)), x)
    tail = np.sqrt(np.maximum(radius ** 2 - (x ** 2).sum(1, keepdims=True), 0.0))
    return (np.concatenate([x, tail], axis=1) / radius).astype(np.float32)


def augment_queries(users: np.ndarray) -> np.ndarray:
    """User embeddings (q, d) -> (q, d + 1) queries for the augmented fused index."""
    u = np.asarray(users, dtype=np.float32)
    return np.concatenate([u, np.zeros((len(u), 1), dtype=np.float32)], axis=1)


def dot_scores(cosines: np.ndarray, users: np.ndarray, radius: float) -> np.ndarray:
    """Dot products u . i from the cosines the augmented index returns for queries ``users`` (q, d)."""
    norms = np.linalg.norm(np.asarray(users, dtype=np.float32), axis=1, keepdims=True)
    return (np.asarray(cosines) * norms * radius).astype(np.float32)
