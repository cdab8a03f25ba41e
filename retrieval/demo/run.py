"""`dgmrec demo` end to end: sample shop (or a given catalog) -> encoder -> index bundle, every step cached.

Steps and their caches, all under the work folder (default ``.cache/demo``):

1. data: the embedded sample shop (``make_sample_shop``, reused when made with the same arguments),
   or the catalog and interactions given;
2. encoder: pretrained open_clip ``ViT-B-32`` where its weights can be had; where not (offline), the
   compact encoder fine-tuned on the catalog (``finetune_clip``; the checkpoint is named by a key of
   catalog, images and settings, so it is trained once). The choice is remembered in
   ``encoder.json`` so a second run does not wait on the weights again;
3. index: ``build_index`` (features and model cached in ``<work>/build``), skipped altogether when
   ``index.stamp.json`` says the bundle was built from the same inputs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dgmrec_core.atomic import atomic_write_text
from dgmrec_core.config import DGMRecConfig
from dgmrec_core.errors import DataError
from dgmrec_core.jsonfiles import canonical, read_json
from retrieval.catalog import load_catalog
from retrieval.defaults import COMPACT_MODEL, DEMO_FINETUNE_EPOCHS, DEMO_TRAINING, ENCODER_MODES, FINETUNE_EPOCHS
from retrieval.encode.clip import ClipEncoder, EncoderUnavailable, sha256_file
from retrieval.encode.finetune import finetune_clip
from retrieval.index.storage import FORMAT_VERSION, META
from retrieval.build.options import BuildOptions
from retrieval.build.pipeline import build_index
from retrieval.demo.sample_shop import make_sample_shop
from retrieval.demo.showcase import encoder_note
from retrieval.encode.spec import DEFAULT_MODEL, DEFAULT_PRETRAINED, EncoderSpec

log = logging.getLogger("dgmrec.demo")


@dataclass
class DemoBuild:
    """What the demo built: the bundle folder, the catalog it came from and how the encoder was chosen."""

    index_dir: Path
    catalog: Path
    interactions: Path | None
    encoder: dict[str, Any]
    seconds: dict[str, float]


def demo_config(epochs: int | None = None) -> DGMRecConfig:
    """The demo's DGMRec settings (``epochs`` overrides the demo's budget)."""
    config = replace(DGMRecConfig(), **DEMO_TRAINING)
    return config if epochs is None else replace(config, epochs=epochs)


def _digest(*parts: Any) -> str:
    return hashlib.sha256(canonical(parts).encode()).hexdigest()


def catalog_key(catalog_path: Path) -> str:
    """Key of a catalog's content: the catalog file's bytes and each image file's name, size and mtime."""
    catalog, _ = load_catalog(catalog_path, skip_bad=True)
    images = []
    for path in catalog.image_paths:
        stat = None if path is None else path.stat()
        images.append(None if stat is None else (path.name, stat.st_size, stat.st_mtime_ns))
    return _digest(sha256_file(catalog_path), images)


def finetuned_encoder(catalog_path: Path, work: Path, *, epochs: int = FINETUNE_EPOCHS,
                      base_pretrained: str | None = None, content_key: str | None = None) -> tuple[ClipEncoder, dict[str, Any]]:
    """The compact encoder fine-tuned on ``catalog_path``: trained once per catalog and settings, then reused.

    ``content_key``: the catalog's :func:`catalog_key` when the caller has it already.
    """
    content_key = content_key or catalog_key(catalog_path)
    key = _digest(content_key, COMPACT_MODEL, base_pretrained, epochs)[:16]
    checkpoint = work / "encoders" / f"{COMPACT_MODEL}-{key}.pt"
    record_path = Path(str(checkpoint) + ".json")
    if checkpoint.is_file() and record_path.is_file():
        log.info(f"encoder: reusing fine-tuned {COMPACT_MODEL} {checkpoint}")
    else:
        log.info(f"encoder: fine-tuning {COMPACT_MODEL} on {catalog_path} ({epochs} epochs, "
                 f"{'from ' + base_pretrained if base_pretrained else 'from scratch'})")
        finetune_clip(catalog_path, checkpoint, model_name=COMPACT_MODEL, base_pretrained=base_pretrained,
                      epochs=epochs)
    record = json.loads(record_path.read_text())
    log.info(f"encoder: {COMPACT_MODEL}, held-out text->image recall@10 {record['eval_recall_at_10']:.3f} "
             f"({record['n_train_pairs']} training pairs, {record['epochs']} epochs)")
    return ClipEncoder(COMPACT_MODEL, str(checkpoint)), record


def choose_encoder(mode: str, catalog_path: Path, work: Path, *, model_name: str = DEFAULT_MODEL,
                   pretrained: str = DEFAULT_PRETRAINED, finetune_epochs: int = FINETUNE_EPOCHS,
                   content_key: str | None = None) -> tuple[ClipEncoder, dict[str, Any]]:
    """The encoder for ``mode``: "pretrained" (``model_name``/``pretrained`` or fail), "compact" (the
    fine-tuned compact encoder) or "auto" (pretrained where the weights can be had, else compact).

    Returns the encoder and a description (``kind``: "pretrained" or "fine-tuned", ``note``, ``spec``).
    An "auto" decision is stored in ``<work>/encoder.json`` and reused while the request is unchanged.
    """
    if mode not in ENCODER_MODES:
        raise ValueError(f"unknown encoder mode {mode!r}: choose one of {', '.join(ENCODER_MODES)}")
    decision_path = work / "encoder.json"
    remember = mode == "auto"
    request = {"mode": mode, "model_name": model_name, "pretrained": pretrained}
    previous = read_json(decision_path)
    if mode == "auto" and previous and previous.get("request") == request:
        mode = previous["choice"]
        log.info(f"encoder: using the earlier choice ({mode}; {decision_path})")
    note = ""
    if mode in ("auto", "pretrained"):
        try:
            log.info(f"encoder: loading pretrained open_clip {model_name} ({pretrained})")
            encoder = _load_pretrained(model_name, pretrained, quick=mode == "auto")
            if remember:
                _remember(decision_path, request, "pretrained")
            spec = EncoderSpec.of(encoder)
            return encoder, {"kind": "pretrained", "note": encoder_note(spec), "spec": spec}
        except EncoderUnavailable as exc:
            if mode == "pretrained":
                raise
            note = f"pretrained {model_name} ({pretrained}) weights are not available here ({exc}). "
            log.info(f"encoder: pretrained {model_name} ({pretrained}) unavailable; fine-tuning the compact encoder "
                     "on the catalog instead")
    encoder, record = finetuned_encoder(catalog_path, work, epochs=finetune_epochs, content_key=content_key)
    if remember:
        _remember(decision_path, request, "compact")
    spec = EncoderSpec.of(encoder)
    return encoder, {"kind": "fine-tuned", "note": note + encoder_note(spec), "spec": spec, "finetune": record}


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_pretrained(model_name: str, pretrained: str, *, quick: bool) -> ClipEncoder:
    """The pretrained encoder; with ``quick``, an unreachable hub counts as offline (cached weights still
    load) instead of retrying a download for most of a minute."""
    if not quick or os.environ.get("HF_HUB_OFFLINE") or _hub_reachable():
        return ClipEncoder(model_name, pretrained)
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return ClipEncoder(model_name, pretrained)
    finally:
        del os.environ["HF_HUB_OFFLINE"]


def _remember(path: Path, request: dict[str, Any], choice: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"request": request, "choice": choice}, indent=2))


def run_demo(work: str | Path = ".cache/demo", *, catalog: str | Path | None = None,
             interactions: str | Path | None = None, index_dir: str | Path = "indexes/sample-shop",
             n_items: int = 3000, encoder_mode: str = "auto", finetune_epochs: int | None = None,
             epochs: int | None = None) -> DemoBuild:
    """Make (or take) the data, choose the encoder, build the index; each step reuses its cache.

    ``finetune_epochs`` (compact encoder) defaults to ``DEMO_FINETUNE_EPOCHS`` on the sample shop and
    ``FINETUNE_EPOCHS`` on a given catalog.
    """
    work, index_dir = Path(work), Path(index_dir)
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if catalog is None and interactions is not None:
        raise DataError(interactions, "--interactions needs --catalog (or give neither, for the sample shop)")
    if finetune_epochs is None:
        finetune_epochs = DEMO_FINETUNE_EPOCHS if catalog is None else FINETUNE_EPOCHS
    if catalog is None:
        log.info(f"[1/3] data: the sample shop ({n_items} items) in {work / 'sample-shop'}")
        shop = make_sample_shop(work / "sample-shop", n_items=n_items, n_users=max(1, n_items // 2))
        catalog, interactions = shop / "catalog.csv", shop / "interactions.csv"
    else:
        log.info(f"[1/3] data: catalog {catalog}, " + (f"interactions {interactions}" if interactions else
                                                        "no interactions (search only, no recommendations)"))
    catalog = Path(catalog).resolve()
    interactions = None if interactions is None else Path(interactions).resolve()
    for path in [p for p in (catalog, interactions) if p is not None]:
        if not path.is_file():
            raise DataError(path, "file not found")
    seconds["data"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    log.info("[2/3] encoder")
    content_key = catalog_key(catalog)
    encoder, info = choose_encoder(encoder_mode, catalog, work, finetune_epochs=finetune_epochs,
                                   content_key=content_key)
    seconds["encoder"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    config = demo_config(epochs)
    stamp_path = work / "index.stamp.json"
    stamp = {"index": str(index_dir.absolute()), "format": FORMAT_VERSION,  # not resolve(): a link to versions
             "key": _digest(content_key, interactions and sha256_file(interactions), encoder.fingerprint(),
                            config.to_dict())}
    if read_json(stamp_path) == stamp and (index_dir / META).is_file():
        log.info(f"[3/3] index: {index_dir} is up to date (same catalog, interactions, encoder and settings)")
    else:
        log.info(f"[3/3] index: encode, train DGMRec (up to {config.epochs} epochs), complete missing "
                 f"modalities, index -> {index_dir}")
        options = BuildOptions(config=config, work_dir=work / "build", skip_bad=True)
        build_index(catalog, interactions, index_dir, options, encoder=encoder)
        atomic_write_text(stamp_path, json.dumps(stamp, indent=2))
    seconds["index"] = time.perf_counter() - t2
    return DemoBuild(index_dir, catalog, interactions, info, seconds)
