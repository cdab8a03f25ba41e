"""The modality registry: every modality of a catalog as data, in one table (DESIGN.md, "Parts").

A modality is a name (also its index ``<name>.faiss`` and feature file in a bundle, and its name in the
model), the catalog column and ``Catalog`` field holding each item's content (None where the item lacks
it), the encoder call that turns contents into features, and the content key the feature cache stores
per item. Everything that handles modalities (cache, build, engine, adding items) loops over
``MODALITIES``; nothing else names one.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dgmrec_core.errors import DataError
from retrieval.catalog import REQUIRED_COLUMNS, Catalog, Problem

if TYPE_CHECKING:
    from retrieval.encode.clip import Encoder


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _file_key(path: Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as e:
        raise DataError(path, f"cannot read image: {e.strerror or e}") from e


@dataclass(frozen=True)
class Modality:
    """One modality: ``name``, the catalog ``column`` and ``Catalog`` ``field`` of its contents, the
    ``Encoder`` method encoding them, and ``content_key`` (sha256 of what determines its feature)."""

    name: str
    column: str
    field: str
    article: str  # "a" or "an", for messages
    encoder_method: str
    content_key: Callable[[Any], str]
    is_file: bool  # contents are file paths (a bundle stores them relative to its folder)

    def contents(self, catalog: Catalog) -> list[Any | None]:
        """Each item's content of this modality (None where the item lacks it)."""
        return getattr(catalog, self.field)

    def observed(self, catalog: Catalog) -> np.ndarray:
        """Bool (n_items,): the item has this modality."""
        return np.array([c is not None for c in self.contents(catalog)], dtype=bool)

    def encode(self, encoder: Encoder, contents: Sequence[Any]) -> np.ndarray:
        """Features (n, d) of ``contents`` (texts, image paths or PIL images) by the encoder's tower."""
        return getattr(encoder, self.encoder_method)(list(contents))

    def encode_rows(self, encoder: Encoder, catalog: Catalog, rows: Sequence[int]) -> np.ndarray:
        """Features of the catalog items at ``rows`` (each must have this modality)."""
        contents = self.contents(catalog)
        return self.encode(encoder, [contents[i] for i in rows])


MODALITIES: dict[str, Modality] = {m.name: m for m in (
    Modality("image", column="image", field="image_paths", article="an", encoder_method="encode_images",
             content_key=_file_key, is_file=True),
    Modality("text", column="text", field="texts", article="a", encoder_method="encode_texts",
             content_key=_text_key, is_file=False),
)}
NAMES = tuple(MODALITIES)


def require_modalities(catalog: Catalog, problems: Sequence[Problem] = ()) -> None:
    """Refuse (``DataError``) a catalog to build from where some modality has no item at all: DGMRec
    learns each modality from the items that have it, so it needs some of each."""
    missing = sorted((m for m in MODALITIES.values() if not m.observed(catalog).any()),
                     key=lambda m: REQUIRED_COLUMNS.index(m.column))  # named in the catalog's column order
    if not missing:
        return
    skipped = sum(p.skipped in {m.column for m in missing} for p in problems)  # only images are skipped alone
    what = " or ".join(f"{m.article} {m.name}" for m in missing)
    note = f" ({skipped} image(s) were skipped as bad)" if skipped else ""
    raise DataError(catalog.source, f"no item of the {catalog.n_items} has {what}{note}: an index needs some items "
                                    f"with a text and some with an image to learn to generate the missing ones; "
                                    f"fill the {' and '.join(repr(m.column) for m in missing)} column(s) for some "
                                    f"items", field=missing[0].column)
