"""Encode a catalog into per-modality raw features, cached on disk by content.

Layout of ``cache_dir``: ``<modality>.npy`` (float32, n_items x d, zero rows where the item lacks the
modality) and ``manifest.json`` (encoder fingerprint, item ids, per item and modality the sha256 of the
text or of the image file bytes). A re-run encodes only texts/images whose content key is new; a
different encoder fingerprint discards the cache. The manifest is removed before the arrays are
replaced and written last, so an interrupted write leaves no manifest (and a full re-encode) rather
than arrays that disagree with it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dgmrec_core.atomic import atomic_path, atomic_write_text
from retrieval.catalog import Catalog
from retrieval.encode.clip import Encoder
from retrieval.modalities import MODALITIES

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_PROGRESS_MIN_FILES = 200


@dataclass
class EncodedFeatures:
    """Raw features of a catalog: per modality a float32 (n_items, d) array and a bool observed mask."""

    item_ids: list[str]
    features: dict[str, np.ndarray]
    observed: dict[str, np.ndarray]
    fingerprint: dict[str, Any]
    n_encoded: dict[str, int]  # how many distinct contents this call had to encode, per modality


def _content_keys(catalog: Catalog) -> dict[str, list[str | None]]:
    """Per modality, each item's content key (``Modality.content_key``; None where the item lacks it)."""
    keys: dict[str, list[str | None]] = {}
    for name, modality in MODALITIES.items():
        contents = modality.contents(catalog)
        n_present = sum(c is not None for c in contents)
        keys[name] = [None if c is None else modality.content_key(c)
                      for c in tqdm(contents, desc=f"hashing {name}s", unit="item", leave=False,
                                    disable=n_present < _PROGRESS_MIN_FILES)]
    return keys


def _normalised(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(fingerprint, sort_keys=True))


def _load_previous(cache_dir: Path, fingerprint: dict[str, Any], dim: int
                   ) -> dict[str, dict[str, np.ndarray]]:
    """Per modality, content key -> cached feature row, from a cache made by the same encoder."""
    try:
        manifest = json.loads((cache_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    if manifest.get("format") != FORMAT_VERSION or manifest.get("fingerprint") != fingerprint:
        return {}
    previous: dict[str, dict[str, np.ndarray]] = {}
    for modality in MODALITIES:
        keys = manifest.get("keys", {}).get(modality, [])
        try:
            array = np.load(cache_dir / f"{modality}.npy", allow_pickle=False)
        except (OSError, ValueError):
            continue
        if array.shape != (len(keys), dim):
            continue
        previous[modality] = {key: array[row] for row, key in enumerate(keys) if key is not None}
    return previous


def _save_array(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def encode_catalog(catalog: Catalog, encoder: Encoder, cache_dir: str | Path) -> EncodedFeatures:
    """Encode every item's text and image with ``encoder``, reusing cached features of unchanged content."""
    cache_dir = Path(cache_dir)
    fingerprint = _normalised(encoder.fingerprint())
    dim = encoder.embed_dim
    keys = _content_keys(catalog)
    previous = _load_previous(cache_dir, fingerprint, dim)

    features: dict[str, np.ndarray] = {}
    observed: dict[str, np.ndarray] = {}
    n_encoded: dict[str, int] = {}
    for modality in MODALITIES:
        cached = previous.get(modality, {})
        array = np.zeros((catalog.n_items, dim), dtype=np.float32)
        todo: dict[str, list[int]] = {}  # new content key -> rows that have it
        for row, key in enumerate(keys[modality]):
            if key is None:
                continue
            if key in cached:
                array[row] = cached[key]
            else:
                todo.setdefault(key, []).append(row)
        if todo:
            firsts = [rows[0] for rows in todo.values()]
            fresh = MODALITIES[modality].encode_rows(encoder, catalog, firsts)
            for vector, rows in zip(fresh, todo.values()):
                array[rows] = vector
        features[modality] = array
        observed[modality] = np.array([k is not None for k in keys[modality]], dtype=bool)
        n_encoded[modality] = len(todo)

    manifest = {"format": FORMAT_VERSION, "fingerprint": fingerprint, "dim": dim,
                "item_ids": catalog.item_ids, "keys": keys}
    manifest_path = cache_dir / MANIFEST
    unchanged = manifest_path.is_file() and previous.keys() == set(MODALITIES) and \
        json.loads(manifest_path.read_text()) == _normalised(manifest)
    if not unchanged:
        manifest_path.unlink(missing_ok=True)
        for modality in MODALITIES:
            _save_array(cache_dir / f"{modality}.npy", features[modality])
        atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    return EncodedFeatures(item_ids=list(catalog.item_ids), features=features, observed=observed,
                           fingerprint=fingerprint, n_encoded=n_encoded)
