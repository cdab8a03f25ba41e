"""What a bundle stores about its items and build beside the vectors, typed (DESIGN.md, "Bundle format").

The build writes a :class:`BuildInfo` into meta.json's ``extra`` and its :class:`ItemStore` into the
bundle's item files (``retrieval.index.itemfiles``); the engine, the page and the benchmarks read both back
with :meth:`BuildInfo.read`. The JSON keys of ``extra`` are those of format version 1 (format 2 changed
only where the rows are stored), so bundles written before these types load unchanged (``generation_eval``
may be absent there, and the item store sits in ``extra``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieval.catalog import Catalog
from retrieval.encode.spec import EncoderSpec
from retrieval.modalities import MODALITIES

if TYPE_CHECKING:
    from retrieval.index.bundle import IndexBundle

MODEL_FILE = "model.pt"  # the bundle's own copy of the trained model
FUSED_TRANSFORM = "dot-to-cosine"  # how fused item vectors sit in a cosine index (retrieval.index.fused)


def bundle_ref(path: str | Path, folder: str | Path) -> str:
    """``path`` as a bundle records it: relative to the bundle folder, so a bundle moved (or copied) together
    with its catalog and encoder still finds them and names no folder of the machine that built it."""
    return os.path.relpath(Path(path).resolve(), Path(folder).resolve())


def image_refs(paths: list[Path | None], folder: Path) -> list[str | None]:
    """Image paths as stored in a bundle: relative to the bundle folder."""
    return [None if p is None else bundle_ref(p, folder) for p in paths]


@dataclass
class ItemStore:
    """Per item, in bundle row order: each modality's content (texts; image paths relative to the bundle
    folder) and the catalog's other columns (``attributes``, e.g. title, colour). Stored as the bundle's
    item columns (one per modality and ``attributes``)."""

    contents: dict[str, list[Any]]
    attributes: list[dict[str, Any]]

    @classmethod
    def of(cls, catalog: Catalog, folder: Path) -> "ItemStore":
        """What a bundle at ``folder`` stores of ``catalog``'s items."""
        contents = {}
        for name, modality in MODALITIES.items():
            values = modality.contents(catalog)
            contents[name] = image_refs(values, folder) if modality.is_file else list(values)
        return cls(contents, list(catalog.extra))

    def __add__(self, other: "ItemStore") -> "ItemStore":
        return ItemStore({m: self.contents[m] + other.contents[m] for m in self.contents},
                         self.attributes + other.attributes)

    def to_columns(self) -> dict[str, list[Any]]:
        return {**self.contents, "attributes": self.attributes}

    @classmethod
    def from_columns(cls, value: dict[str, list[Any]]) -> "ItemStore":
        return cls({k: v for k, v in value.items() if k != "attributes"}, value["attributes"])


@dataclass
class GenerationReport:
    """The one report of how well a build generates missing modalities, measured on its held-out items.

    ``heldout``: per held-out item the cosine of its generated feature to the real one, the real item's
    rank and mean imputation's cosine (``items``), and per modality a ``summary``. ``routes``:
    ``dgmrec_core.heldout.heldout_report`` (per pair of modalities Hit@10 of generation and of each query
    route, the ``auto`` route, plain-word ``warnings``). ``imputation``: ``retrieval.build.report``, DGMRec
    against nearest-neighbour imputation (Hit@K curves), or None in bundles written before it.
    """

    heldout: dict[str, Any]
    routes: dict[str, Any]
    imputation: dict[str, Any] | None = None

    def route_for(self, source: str, target: str) -> str | None:
        """The route the held-out measurement found best from ``source`` to ``target`` (None: not measured)."""
        for pair in self.routes.get("pairs", []):
            if pair["src"] == source and pair["dst"] == target:
                return pair["auto"]
        return None

    def to_extra(self) -> dict[str, Any]:
        out = {"heldout": self.heldout, "heldout_eval": self.routes}
        return out if self.imputation is None else {**out, "generation_eval": self.imputation}

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> "GenerationReport":
        return cls(extra.get("heldout", {}), extra.get("heldout_eval", {}), extra.get("generation_eval"))


@dataclass
class TrainingRecord:
    """The training run behind a bundle: config (and its hash), data fingerprint, per-epoch ``history``,
    ``best_epoch`` and the final ``metrics`` (``valid``, ``test``)."""

    config: dict[str, Any]
    config_hash: str
    data_fingerprint: str
    history: list[dict[str, Any]]
    best_epoch: int | None
    metrics: dict[str, Any]

    def to_extra(self) -> dict[str, Any]:
        return {"config": self.config, "config_hash": self.config_hash, "data_fingerprint": self.data_fingerprint,
                "history": self.history, "best_epoch": self.best_epoch, "metrics": self.metrics}

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> "TrainingRecord":
        return cls(extra.get("config", {}), extra.get("config_hash", ""), extra.get("data_fingerprint", ""),
                   extra.get("history", []), extra.get("best_epoch"), extra.get("metrics", {}))


@dataclass
class BuildInfo:
    """Everything a bundle records beside its vectors: the catalog(s), the items, the users, the encoder,
    the fused index's radius, the model file, the training run, the generation report and what was
    skipped. Stored as meta.json's ``extra`` (with the user arrays as ``extra_<name>.npy``), the items as
    the bundle's item files."""

    catalog: str
    items: ItemStore
    users: list[str]
    encoder: EncoderSpec
    radius: float
    training: TrainingRecord
    report: GenerationReport
    skipped: list[str] = field(default_factory=list)
    catalogs: list[str] = field(default_factory=list)  # catalogs added later (``add-items``)
    model_file: str = MODEL_FILE
    encoder_file: bool = False  # encoder.pretrained is a weights file, relative to the bundle folder

    @classmethod
    def relative(cls, folder: Path, *, catalog: Path, encoder: EncoderSpec, **fields: Any) -> "BuildInfo":
        """A new bundle's info with the catalog and an encoder weights file recorded relative to ``folder``."""
        weights = encoder.pretrained
        is_file = weights is not None and os.path.isfile(weights)
        if is_file:
            encoder = EncoderSpec(encoder.model_name, bundle_ref(weights, folder), encoder.seed)
        return cls(catalog=bundle_ref(catalog, folder), encoder=encoder, encoder_file=is_file, **fields)

    def encoder_here(self, folder: Path) -> EncoderSpec:
        """The encoder spec with its weights file as a path here (resolved against the bundle ``folder``);
        bundles written before recorded an absolute path, which is taken as it is."""
        if not self.encoder_file:
            return self.encoder
        return EncoderSpec(self.encoder.model_name, str((Path(folder) / self.encoder.pretrained).resolve()),
                           self.encoder.seed)

    def catalog_roots(self, folder: Path) -> set[Path]:
        """The folders of the bundle's catalogs (recorded relative to ``folder``, or absolute before)."""
        return {(Path(folder) / c).resolve().parent for c in [self.catalog, *self.catalogs] if c}

    def to_extra(self) -> dict[str, Any]:
        """The JSON of meta.json's ``extra`` (everything but the items)."""
        encoder = {**self.encoder.to_json(), **({"pretrained_file": True} if self.encoder_file else {})}
        return {"catalog": self.catalog, "users": self.users,
                "encoder": encoder, **self.training.to_extra(), **self.report.to_extra(),
                "skipped": self.skipped, "catalogs": self.catalogs,
                "fused": {"transform": FUSED_TRANSFORM, "radius": self.radius}, "model_file": self.model_file}

    @classmethod
    def read(cls, bundle: "IndexBundle") -> "BuildInfo":
        """A bundle's info: meta.json's ``extra`` and the items from the item files (any bundle of format
        version 1 or 2; those written before item files hold the same columns in ``extra["items"]``)."""
        extra = bundle.meta["extra"]
        columns = bundle.item_columns()
        return cls.from_extra(extra, ItemStore.from_columns(extra["items"] if columns is None else columns))

    @classmethod
    def from_extra(cls, extra: dict[str, Any], items: ItemStore) -> "BuildInfo":
        """Read meta.json's ``extra`` with the bundle's ``items``."""
        return cls(catalog=extra.get("catalog", ""), items=items,
                   users=list(extra["users"]), encoder=EncoderSpec.from_json(extra["encoder"]),
                   radius=float(extra["fused"]["radius"]), training=TrainingRecord.from_extra(extra),
                   report=GenerationReport.from_extra(extra), skipped=list(extra.get("skipped", [])),
                   catalogs=list(extra.get("catalogs", [])), model_file=extra.get("model_file", MODEL_FILE),
                   encoder_file=bool(extra["encoder"].get("pretrained_file", False)))
