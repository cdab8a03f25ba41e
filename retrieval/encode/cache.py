"""Encode a catalog into per-modality raw features, cached on disk by content.

Layout of ``cache_dir``: ``<modality>.npy`` (float32, n_items x d, zero rows where the item lacks the
modality) and ``manifest.json`` (encoder fingerprint, item ids, per item and modality the sha256 of the
text or of the image file bytes). A re-run encodes only texts/images whose content key is new; a
different encoder fingerprint discards the cache. The manifest is removed before the arrays are
replaced and written last, so an interrupted write leaves no manifest (and a full re-encode) rather
than arrays that disagree with it.

Launched by torchrun (``dgmrec encode``), every process hashes its shard of the items and encodes its
shard of the contents rank 0 finds new, the shards are gathered, and rank 0 alone writes the merged
cache (same layout, same atomic order). Every rank returns the whole features where it sees the same
cache folder as rank 0 (one machine, or a shared file system); rank 0's are whole in any case.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dgmrec_core.atomic import atomic_path, atomic_write_text
from dgmrec_core.distributed import Context, barrier, broadcast_object, gather_objects
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


def _content_keys(catalog: Catalog, ctx: Context) -> dict[str, list[str | None]]:
    """Per modality, each item's content key (``Modality.content_key``; None where the item lacks it);
    each rank hashes its shard of the items and the shards are gathered."""
    keys: dict[str, list[str | None]] = {}
    for name, modality in MODALITIES.items():
        contents = modality.contents(catalog)[ctx.shard(catalog.n_items)]
        n_present = sum(c is not None for c in contents)
        mine = [None if c is None else modality.content_key(c)
                for c in tqdm(contents, desc=f"hashing {name}s", unit="item", leave=False,
                              disable=n_present < _PROGRESS_MIN_FILES or not ctx.is_main)]
        keys[name] = [key for shard in gather_objects(ctx, mine) for key in shard]
    return keys


def _encode_shared(ctx: Context, modality: str, encoder: Encoder, catalog: Catalog, rows: list[int]) -> np.ndarray:
    """Features of the catalog items at ``rows``: each rank encodes its shard, every rank gets them all."""
    if not ctx.distributed:
        return MODALITIES[modality].encode_rows(encoder, catalog, rows)
    mine = rows[ctx.shard(len(rows))]
    part = (MODALITIES[modality].encode_rows(encoder, catalog, mine) if mine
            else np.zeros((0, encoder.embed_dim), dtype=np.float32))
    return np.concatenate(gather_objects(ctx, part))


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


def encode_catalog(catalog: Catalog, encoder: Encoder, cache_dir: str | Path, *,
                   ctx: Context | None = None) -> EncodedFeatures:
    """Encode every item's text and image with ``encoder``, reusing cached features of unchanged content.

    With a distributed ``ctx`` (``dgmrec_core.distributed.init`` under torchrun), the work is sharded
    across the ranks and rank 0 writes the cache; every rank must call this with the same catalog."""
    ctx = ctx or Context()
    cache_dir = Path(cache_dir)
    fingerprint = _normalised(encoder.fingerprint())
    dim = encoder.embed_dim
    keys = _content_keys(catalog, ctx)
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
        todo = broadcast_object(ctx, todo)  # rank 0's cache decides what is encoded: the shards agree
        if todo:
            firsts = [rows[0] for rows in todo.values()]
            fresh = _encode_shared(ctx, modality, encoder, catalog, firsts)
            for vector, rows in zip(fresh, todo.values()):
                array[rows] = vector
        features[modality] = array
        observed[modality] = np.array([k is not None for k in keys[modality]], dtype=bool)
        n_encoded[modality] = len(todo)

    manifest = {"format": FORMAT_VERSION, "fingerprint": fingerprint, "dim": dim,
                "item_ids": catalog.item_ids, "keys": keys}
    if ctx.is_main:
        _write_cache(cache_dir, manifest, features, complete=previous.keys() == set(MODALITIES))
    barrier(ctx)  # the cache is whole when any rank returns
    return EncodedFeatures(item_ids=list(catalog.item_ids), features=features, observed=observed,
                           fingerprint=fingerprint, n_encoded=n_encoded)


def _write_cache(cache_dir: Path, manifest: dict[str, Any], features: dict[str, np.ndarray], *, complete: bool) -> None:
    """Write the arrays and then the manifest, unless the cache (``complete``: every modality was read
    from it) already holds exactly this manifest."""
    manifest_path = cache_dir / MANIFEST
    unchanged = complete and manifest_path.is_file() and json.loads(manifest_path.read_text()) == _normalised(manifest)
    if unchanged:
        return
    manifest_path.unlink(missing_ok=True)
    for modality in MODALITIES:
        _save_array(cache_dir / f"{modality}.npy", features[modality])
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
