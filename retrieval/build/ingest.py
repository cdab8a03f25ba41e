"""Adding the items of another catalog file to a built index, without retraining (``dgmrec add-items``).

Encode what the new items have, generate what they lack through the query path with the catalog mean
preference (``retrieval.build.completion.complete_new_items``), fuse them with
``DGMRec.cold_item_embeddings`` and append everything to the bundle (``IndexBundle.add_items``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dgmrec_core.errors import DataError
from retrieval.build.completion import complete_new_items
from retrieval.catalog import Catalog, Problem, load_catalog
from retrieval.index.fused import augment_items
from retrieval.index.info import ItemStore, bundle_ref
from retrieval.modalities import MODALITIES
from retrieval.search.engine import SearchEngine


def add_items(engine: SearchEngine, catalog_path: str | Path, *, skip_bad: bool = False,
              on_skipped: Callable[[list[Problem]], None] | None = None) -> list[str]:
    """Add the items of another catalog file to ``engine``'s bundle: encode, generate missing modalities,
    append everywhere. Returns the new item ids.

    The model is not retrained: missing modalities come from the query path with the catalog mean
    preference and fused embeddings from ``DGMRec.cold_item_embeddings``. With ``skip_bad`` the problems
    skipped go to ``on_skipped`` and into the bundle's ``skipped`` list.
    """
    bundle, model = engine.bundle, engine.model
    catalog, problems = load_catalog(catalog_path, skip_bad=skip_bad)
    if problems and on_skipped is not None:
        on_skipped(problems)
    present = set(bundle.item_ids)
    known = [i for i in catalog.item_ids if i in present]
    if known:
        raise DataError(catalog.source, f"{len(known)} item id(s) already in the index: "
                                        f"{', '.join(map(repr, known[:5]))}{' ...' if len(known) > 5 else ''}")
    observed = {m: MODALITIES[m].observed(catalog) for m in engine.modalities}
    features = {m: _encoded(engine, catalog, m, observed[m]) for m in engine.modalities}
    done = complete_new_items(model, features, observed, item_ids=catalog.item_ids, source=catalog.source)
    with torch.no_grad():
        fused = model.cold_item_embeddings([torch.as_tensor(done.features[m]) for m in engine.modalities])
    info = engine.info
    added = replace(info, catalogs=[*info.catalogs, bundle_ref(catalog.source, bundle.folder)],
                    skipped=[*info.skipped, *(f"{catalog.source.name}: {p}" for p in problems)])
    bundle.add_items(catalog.item_ids, done.features, done.generated, augment_items(fused.numpy(), engine.radius),
                     extra=added.to_extra(), items=ItemStore.of(catalog, bundle.folder).to_columns(),
                     earlier_items=None if bundle.has_item_files else info.items.to_columns())
    return list(catalog.item_ids)


def _encoded(engine: SearchEngine, catalog: Catalog, name: str, observed: np.ndarray) -> np.ndarray | None:
    """Features (n_items, d) of modality ``name`` (zero rows where missing), None when no item has it."""
    rows = np.flatnonzero(observed)
    if not len(rows):
        return None
    x = np.zeros((catalog.n_items, engine.bundle.dims[name]), dtype=np.float32)
    x[rows] = MODALITIES[name].encode_rows(engine.encoder, catalog, rows)
    return x
