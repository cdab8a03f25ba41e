"""Encode a catalog into per-modality raw features, cached on disk by content.

Layout of ``cache_dir``: ``<modality>.npy`` (float32, n_items x d, zero rows where the item lacks the
modality) and ``manifest.json`` (encoder fingerprint, item ids, per item and modality the sha256 of the
text or of the image file bytes). A re-run encodes only texts/images whose content key is new; a
different encoder fingerprint discards the cache. The manifest is removed before the arrays are
replaced and written last, so an interrupted write leaves no manifest (and a full re-encode) rather
than arrays that disagree with it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dgmrec_core.atomic import atomic_path, atomic_write_text
from dgmrec_core.errors import DataError
from retrieval.catalog import Catalog
from retrieval.encoders import Encoder

MODALITIES = ("image", "text")
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
    """sha256 per item: of the UTF-8 text, and of the image file's bytes (None where missing)."""
    texts = [None if t is None else hashlib.sha256(t.encode("utf-8")).hexdigest() for t in catalog.texts]
    images: list[str | None] = []
    n_files = int(catalog.has_image.sum())
    for path in tqdm(catalog.image_paths, desc="hashing images", unit="img", leave=False,
                     disable=n_files < _PROGRESS_MIN_FILES):
        if path is None:
            images.append(None)
            continue
        try:
            images.append(hashlib.sha256(path.read_bytes()).hexdigest())
        except OSError as e:
            raise DataError(path, f"cannot read image: {e.strerror or e}") from e
    return {"image": images, "text": texts}


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
            if modality == "text":
                fresh = encoder.encode_texts([catalog.texts[i] for i in firsts])
            else:
                fresh = encoder.encode_images([catalog.image_paths[i] for i in firsts])
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
