"""Build a searchable index from a catalog and an interaction log (DESIGN.md section 4, left to right).

catalog -> open_clip features (cached) -> dataset with missing modalities (plus a held-out share of
items whose real feature is kept to measure generation) -> DGMRec training (checkpointed; reused when
data and config are unchanged) -> completed features -> ``IndexBundle`` with per-modality indexes, the
fused index and everything the engine and the UI show (texts, images, users, history, held-out report).

Held-out items keep their real feature in the index (the product should use all real data); what the
model generated for them is stored beside it (``heldout_generated_<modality>``) and scored in
``meta.json`` (cosine to the real feature, the real item's rank among all items for that vector, and the
cosine of plain mean imputation as the baseline).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgmrec_core.checkpoint import (dataset_fingerprint, load_model, model_shape, model_state, read_checkpoint,
                                    save_checkpoint)
from dgmrec_core.config import DGMRecConfig
from dgmrec_core.content_training import fit_content
from dgmrec_core.data import Dataset, Interactions, Modality
from dgmrec_core.errors import DataError
from dgmrec_core.heldout import heldout_report
from dgmrec_core.model import DGMRec
from dgmrec_core.trainer import fit, place
from retrieval.catalog import Catalog, Problem, load_catalog
from retrieval.build.completion import complete_features
from retrieval.build.holdout import Holdout, choose_holdout, score_heldout, with_real
from retrieval.build.interactions import catalog_interactions, no_users
from retrieval.build.options import BuildOptions
from retrieval.encode.clip import ClipEncoder, Encoder, sha256_file
from retrieval.encode.cache import EncodedFeatures, encode_catalog
from retrieval.index.fused import augment_items, radius_for
from retrieval.build.report import generation_quality
from retrieval.index.bundle import IndexBundle
from retrieval.index.info import MODEL_FILE, BuildInfo, EncoderSpec, GenerationReport, ItemStore, TrainingRecord
from retrieval.index.storage import check_bundle_target
from retrieval.modalities import MODALITIES, NAMES, require_modalities

MAX_LISTED_SKIPS = 20
log = logging.getLogger("dgmrec.build")


def _config_hash(config: DGMRecConfig) -> str:
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()


def _train(dataset: Dataset, config: DGMRecConfig, work_dir: Path, progress: bool) -> tuple[DGMRec, dict]:
    """The trained model and its slim checkpoint payload; reused when data and config are unchanged."""
    final, partial = work_dir / MODEL_FILE, work_dir / "training.pt"
    fingerprint = dataset_fingerprint(dataset)
    wanted = config.to_dict()

    def matches(path: Path) -> bool:
        if not path.is_file():
            return False
        try:
            payload = read_checkpoint(path)
        except DataError:
            return False
        return (payload.get("fingerprint") == fingerprint and payload.get("config") == wanted
                and (path != final or "metrics" in payload))

    if matches(final):
        log.info(f"train: reusing {final} (same data fingerprint and config)")
        return load_model(final)
    if dataset.n_users == 0:
        log.info(f"train: no interactions: DGMRec's generation on the {dataset.n_items} items' own image-text pairs "
                 f"(no users: no recommendations, no personalisation), {config.epochs} epochs")
        result = fit_content(dataset, config, progress=progress)
    else:
        resume = matches(partial)
        log.info(f"train: DGMRec on {dataset.n_users} users x {dataset.n_items} items, up to {config.epochs} epochs"
                 + (f" (resuming {partial})" if resume else ""))
        result = fit(dataset, config, checkpoint=partial, resume=resume, progress=progress)
    model = place(result.model, torch.device("cpu"))  # trained on a GPU where there is one; the rest on the CPU
    model.eval()
    payload = {"config": wanted, "shape": model_shape(model), "fingerprint": fingerprint,
               "history": result.history, "best": model_state(model), "best_epoch": result.best_epoch,
               "metrics": {"valid": result.valid, "test": result.test}}
    save_checkpoint(final, payload)
    if dataset.n_users == 0:
        log.info(f"train: {result.best_epoch} epochs, final loss {sum(result.history[-1]['loss'].values()):.4f}")
        return model, payload
    log.info(f"train: best epoch {result.best_epoch}, test recall@20 {result.test.get('recall@20', float('nan')):.4f}")
    return model, payload


def _user_items(inter: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, indices) of each user's training items."""
    order = np.lexsort((inter.train[:, 1], inter.train[:, 0]))
    counts = np.bincount(inter.train[:, 0], minlength=inter.n_users)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, inter.train[order, 1].astype(np.int64)


def build_index(catalog_path: str | Path, interactions_path: str | Path | None, out_dir: str | Path,
                options: BuildOptions | None = None, *, encoder: Encoder | None = None) -> Path:
    """Catalog + interactions -> trained DGMRec -> completed features -> index bundle at ``out_dir``.

    ``interactions_path`` None: a catalog alone; DGMRec's generation trains on the items' own pairs
    (``dgmrec_core.content_training``) and the index serves search, not recommendations. ``encoder``
    encodes the catalog (else the one ``options.encoder`` names is loaded). Features and the model are
    cached in the work folder, so an unchanged re-run only rebuilds the indexes. Returns the bundle folder.
    """
    options = options or BuildOptions()
    if not options.config.use_modalities:
        raise DataError(None, "an index needs DGMRec's modality branch to generate missing features; "
                              "the LightGCN baseline (use_modalities off) cannot build one", field="use_modalities")
    out_dir = Path(out_dir)
    check_bundle_target(out_dir, force=options.force)
    work_dir = options.work_folder(out_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    catalog, problems, inter = _read_inputs(catalog_path, interactions_path, options)
    if encoder is None:
        log.info(f"encoder: loading open_clip {options.encoder.describe()}")
        encoder = ClipEncoder(options.encoder.model_name, options.encoder.pretrained, seed=options.encoder.seed)
    encoded = encode_catalog(catalog, encoder, work_dir / "features")
    log.info(f"features: {encoder.model_name}, dim {encoder.embed_dim}; newly encoded "
             + ", ".join(f"{n} {m}s" for m, n in encoded.n_encoded.items()) + f" (cache {work_dir / 'features'})")
    held = choose_holdout(encoded.observed, options.holdout, options.holdout_seed())
    log.info(f"held out: {len(held.rows)} items with both modalities lose one for training (to score generation)")
    model, payload = _train(_training_set(inter, encoded, held, out_dir.name), options.config, work_dir,
                            options.progress)
    vectors, report, held_arrays = _complete(model, encoded, held, catalog)
    with torch.no_grad():
        users, items = model.final_embeddings()
    users, items = users.numpy().astype(np.float32), items.numpy()
    radius = radius_for(items)
    training = TrainingRecord(config=payload["config"], config_hash=_config_hash(options.config),
                              data_fingerprint=payload["fingerprint"], history=payload["history"],
                              best_epoch=payload["best_epoch"], metrics=payload["metrics"])
    info = BuildInfo.relative(out_dir, catalog=catalog.source, encoder=EncoderSpec.of(encoder),
                              items=ItemStore.of(catalog, out_dir), users=list(inter.user_ids), radius=radius,
                              training=training, report=report, skipped=[str(p) for p in problems],
                              model_file=MODEL_FILE)
    indptr, indices = _user_items(inter)
    arrays = {"user_embeddings": users, "user_items_indptr": indptr, "user_items_indices": indices,
              **held_arrays}
    log.info(f"index: writing {out_dir} ({catalog.n_items} items, {len(NAMES)} modalities + fused)")
    IndexBundle.build(out_dir, item_ids=catalog.item_ids, modality_vectors=vectors,
                      generated={m: ~encoded.observed[m] for m in NAMES}, fused=augment_items(items, radius),
                      model_fingerprint=sha256_file(work_dir / MODEL_FILE), encoder_fingerprint=encoded.fingerprint,
                      kind=options.kind, extra={**info.to_extra(), **arrays}, files={MODEL_FILE: work_dir / MODEL_FILE},
                      items=info.items.to_columns())
    log.info(f"done: {out_dir}")
    return out_dir


def _read_inputs(catalog_path: str | Path, interactions_path: str | Path | None, options: BuildOptions
                 ) -> tuple[Catalog, list[Problem], Interactions]:
    """The catalog (problems listed with ``skip_bad``) and its interactions, read before anything is encoded
    (so an empty or header-only interactions file fails at once)."""
    catalog, problems = load_catalog(catalog_path, skip_bad=options.skip_bad)
    log.info(f"catalog: {catalog.n_items} items from {catalog.source} ("
             + ", ".join(f"{int(m.observed(catalog).sum())} with {m.article} {m.name}" for m in MODALITIES.values())
             + ")")
    report_skips(problems)
    require_modalities(catalog, problems)
    if interactions_path is None:
        log.info("interactions: none given: search only (generation trained on the items' own pairs; "
                 "no recommendations)")
        return catalog, problems, no_users(catalog)
    inter, dropped = catalog_interactions(Path(interactions_path), catalog, skip_bad=options.skip_bad,
                                          seed=options.holdout_seed())
    if dropped:
        log.info(f"skipped: {dropped} interaction(s) of items not in the catalog")
    log.info(f"interactions: {inter.n_users} users, {len(inter.train)} train / {len(inter.valid)} valid / "
             f"{len(inter.test)} test")
    return catalog, problems, inter


def _training_set(inter: Interactions, encoded: EncodedFeatures, held: Holdout, name: str) -> Dataset:
    """The dataset the model trains on: the encoded features with the held-out rows hidden."""
    observed = held.hide(encoded.observed)
    modalities = [Modality(m, np.where(observed[m][:, None], encoded.features[m], 0).astype(np.float32),
                           observed[m]) for m in NAMES]
    return Dataset(inter, modalities, name=name)


def _complete(model: DGMRec, encoded: EncodedFeatures, held: Holdout, catalog: Catalog
              ) -> tuple[dict[str, np.ndarray], GenerationReport, dict[str, np.ndarray]]:
    """Every item's features (generated where missing; held-out rows back to their real feature), the
    generation report, and what was generated for the held-out items."""
    log.info("complete: generating missing features")
    done = complete_features(model, encoded.features, held.hide(encoded.observed))
    vectors = {m: with_real(done.features[m], encoded.features[m], held, m) for m in NAMES}
    heldout, held_arrays = score_heldout(held, encoded.features, done.features, vectors, encoded.observed,
                                         catalog.item_ids)
    for m, summary in heldout["summary"].items():
        log.info(f"generation ({m}, {summary['items']} held-out items): cosine to the real feature "
                 f"{summary['mean_cosine']:.3f} (mean imputation {summary['mean_imputation_cosine']:.3f}), "
                 f"median rank of the real item {summary['median_rank']:.0f} of {summary['n_items']}")
    routes = heldout_report(model, [encoded.features[m] for m in model.names],
                            [encoded.observed[m] for m in model.names])
    _log_routes(routes)
    report = GenerationReport(heldout=heldout, routes=routes,
                              imputation=generation_quality(model, encoded.features, catalog.item_ids))
    return vectors, report, held_arrays


def _log_routes(report: dict[str, Any]) -> None:
    """The held-out generation and route table, then its warnings in plain words."""
    for pair in report["pairs"]:
        log.info(f"held-out {pair['src']} -> {pair['dst']} ({pair['n']} items, {pair['n_candidates']} candidates, "
                 f"chance Hit@10 {pair['chance']:.3f}):")
        for what, scores in (("generation", pair["generation"]), ("route", pair["routes"])):
            log.info(f"  {what:10s} " + "  ".join(f"{k} {v['hit@10']:.2f}" for k, v in scores.items())
                     + "   (Hit@10)")
        log.info(f"  auto route: {pair['auto']}")
    for warning in report["warnings"]:
        log.info(f"warning: {warning}")


def report_skips(problems: list[Problem]) -> None:
    """Log what ``skip_bad`` dropped (the first ``MAX_LISTED_SKIPS``, then a count)."""
    if not problems:
        return
    log.info(f"skipped: {len(problems)} problem(s) in the catalog")
    for p in problems[:MAX_LISTED_SKIPS]:
        log.info(f"  {p} -> {'image dropped, item kept' if p.skipped == 'image' else 'row dropped'}")
    if len(problems) > MAX_LISTED_SKIPS:
        log.info(f"  ... and {len(problems) - MAX_LISTED_SKIPS} more (all listed in the bundle's meta.json)")
