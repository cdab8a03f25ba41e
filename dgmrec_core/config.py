"""Hyperparameters. Defaults are the paper's best Amazon Baby configuration (DESIGN.md section 2) and its
reference code's stopping rule (validate every 3 epochs, stop after 26 validations without improvement, cap 500),
with one addition: no stop while the validation curve still climbs (``stop_rising_sigmas``)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import DataError
from .options import option


@dataclass
class DGMRecConfig:
    """All settable options of the model and its training, each with its help text (``option``)."""

    embedding_size: int = option(64, "embedding size d of every representation")
    n_ui_layers: int = option(3, "LightGCN layers on the user-item graph")
    n_mm_layers: int = option(2, "propagation layers on each modality's item kNN graph")
    knn_k: int = option(10, "neighbours per item in the modality kNN graphs")
    knn_observed_only: bool = option(False, "build each modality's kNN among items observing it (off = the paper's "
                                            "code: search all items, then cut edges to missing ones)")
    additive: float = option(0.1, "weight of the generation losses (specific generators and cross-modal "
                                  "translators)")
    avg_lambda: float = option(0.4, "blend of a rebuilt kNN row into the old one for generated items: new = "
                                    "l*rebuilt + (1-l)*old")
    refresh_every: int = option(5, "epochs between kNN-row refreshes of generated items")
    inter_modal: float = option(0.01, "weight of the inter-modal InfoNCE (general parts of different modalities, "
                                      "items and users)")
    inter_modal_temp: float = option(0.4, "temperature of the inter-modal InfoNCE")
    intra_modal: float = option(0.01, "weight of the user-item InfoNCE alignments (CF, general, specific spaces)")
    intra_modal_temp: float = option(0.2, "temperature of the user-item InfoNCE alignments")
    align_bm: float = option(0.01, "weight of the behaviour-modality InfoNCE (ID embedding vs summed general)")
    align_bm_temp: float = option(0.4, "temperature of the behaviour-modality InfoNCE")
    recon: float = option(0.1, "weight of the feature reconstruction loss (decoder([g, s]) -> x)")
    reg: float = option(0.1, "L2 weight on the modality representations")
    reg_id: float = option(1e-5, "L2 weight on the batch's collaborative (LightGCN) embeddings")
    sampler: float = option(0.01, "weight of the CLUB mutual-information upper bound between specific and general "
                                  "parts")
    club_steps: int = option(5, "CLUB estimator optimisation steps per epoch")
    club_lr: float = option(1e-4, "learning rate of the CLUB estimator's own optimiser")
    lr: float = option(1e-3, "Adam learning rate")
    batch_size: int = option(2048, "BPR triples per batch")
    epochs: int = option(500, "maximum training epochs (the cap of the stopping rule; also the fixed length of "
                              "training when the validation split is too sparse to stop on)")
    patience: int = option(26, "early stopping: validations (one every eval_every epochs) without a better "
                               "validation Recall@20; the defaults are the paper's reference rule (every 3 epochs, "
                               "26 validations, cap 500), which goes on through LightGCN's transient early dip")
    stop_rising_sigmas: float = option(3.0, "early stopping waits while the validation curve still climbs: after "
                                            "patience validations without a better one, training goes on while "
                                            "the least-squares slope of the last patience validations, or of "
                                            "their last half, is more than this many standard errors above zero "
                                            "(a curve climbing back from an early peak); 0: the paper's "
                                            "reference rule alone")
    eval_every: int = option(3, "epochs between validation evaluations (the last epoch is always validated)")
    imputation: str = option("mean", "initial fill of missing feature rows: 'mean' of observed rows or 'zero'")
    generation_space: str = option("propagated", "with --generator paper, where translators and decoders learn (the"
                                                 " contrastive generator always uses the encoders' own parts): "
                                                 "'propagated' (the paper's code: preference-filtered, "
                                                 "graph-propagated parts; the decoder also learns from generated "
                                                 "rows) or 'raw' (the encoders' own g and s, the space generation "
                                                 "and queries feed them; the decoder learns from observed rows "
                                                 "only)")
    generator: str = option("contrastive", "how missing features are generated: 'contrastive' (the default, "
                                           "docs/DESIGN.md 'Generation'): translators, specific generators and "
                                           "decoders learn on the encoders' own parts of observed rows, and the "
                                           "whole chain decoder([translator(g_src), gen(f)]) is trained end to end "
                                           "against the item's real feature with InfoNCE + MSE, then calibrated to "
                                           "the real features' distribution; 'paper': exactly the published method "
                                           "(MSE losses only; space set by generation_space)")
    gen_temp: float = option(0.1, "temperature of the contrastive generator's InfoNCE (generated feature vs the "
                                  "batch's real features)")
    gen_weight: float = option(1.0, "contrastive generator: weight of the end-to-end generation loss (InfoNCE + MSE"
                                    " of the whole chain)")
    gen_chain_scope: str = option("all", "contrastive generator, during training: what the chain loss trains: "
                                         "'all' (the general encoders and the users' preference too) or "
                                         "'generator' (only translators, specific generators and decoders: "
                                         "the encoders and preferences learn from recommendation alone)")
    gen_training: str = option("joint", "contrastive generator: when its chain learns: 'joint' (alongside the "
                                        "recommendation loss, as gen_weight and gen_chain_scope say, then refitted) "
                                        "or 'after' (docs/DESIGN.md 'Generation after training': training runs the "
                                        "paper's generation terms exactly, as --generator paper; the contrastive "
                                        "chain is then fitted on the best state by the refit, gen_refit_steps "
                                        "steps; recommendation scores are the paper's)")
    gen_refit_steps: int = option(1000, "contrastive generator: steps of the refit after training (its own copy of "
                                        "the general encoder, translators, specific generators and decoders fitted "
                                        "on the items' own modality pairs; recommendation scores unchanged); 0 = "
                                        "off")
    gen_calibration: bool = option(True, "contrastive generator: match each generated dimension's mean and spread "
                                         "to the real features' (off = raw decoder output)")
    untrained_items: str = option("content-neighbours", "items without a training interaction (new or cold "
                                                       "items): 'content-neighbours' (the default, docs/DESIGN.md "
                                                       "'Untrained items'): their collaborative embedding is the "
                                                       "weighted mean of their trained neighbours' in the modality "
                                                       "kNN graphs; 'paper': their ID embedding stays at its random "
                                                       "initialisation, as in the paper's code")
    training_mode: str = option("auto", "what a training batch computes: 'paper-exact' (the paper's code: "
                                               "every item's modality representations on every batch), "
                                               "'batch-local' (docs/DESIGN.md 'Batch-local training': only the "
                                               "batch's items and users, other rows read from a cache refreshed "
                                               "each epoch; per-batch cost grows with the batch, not the "
                                               "catalog) or 'auto' (the default: batch-local when the catalog has "
                                               "more items than a batch can touch, 2 x batch_size, else "
                                               "paper-exact)")
    cf_propagation: str = option("exact", "batch-local mode's collaborative (LightGCN) embeddings: 'exact' (the "
                                          "default: whole-graph propagation on every batch) or 'cached' "
                                          "(docs/DESIGN.md 'Batch-local training': the batch's users and items "
                                          "propagated from their own fresh rows and every other node's layers read "
                                          "from a per-epoch cache; per-batch cost grows with the batch's "
                                          "neighbourhood, not the graph)")
    fusion: str = option("paper", "how an item's (and a user's) modality parts join its collaborative embedding: "
                                  "'paper' (e + (mean_m g_m + sum_m s_m) / (M + 1)) or 'gated' (the same sum "
                                  "times a learned scalar that starts at 0: training starts as LightGCN and "
                                  "lets content in as far as it helps)")
    generation: bool = option(True, "generate missing features each epoch (off = the no-generation baseline: "
                                    "features stay imputed)")
    use_modalities: bool = option(True, "off = plain LightGCN baseline (no modality branch at all)")
    train_features: bool = option(False, "make raw feature rows trainable parameters, as the official code does")
    bf16_logits: bool = option(False, "compute the InfoNCE similarity products in bfloat16 (off, the default: "
                                      "float32 throughout; on CPU it is no faster at distinct-row sizes, and each "
                                      "new shape grows oneDNN's primitive cache)")
    feature_precision: str = option("auto", "precision of the training batches' products with the raw feature "
                                            "rows (encoders and decoder targets): 'bfloat16' casts the batch's rows "
                                            "to bfloat16 for them, 'float32' keeps them, 'auto' (the default) "
                                            "bfloat16 on a CPU with bfloat16 units (AVX512-BF16 or AMX), else "
                                            "float32 (docs/DESIGN.md, 'Other named deviations'); generation, "
                                            "validation and search stay float32")
    nce_anchors: int = option(0, "anchors of the paper's InfoNCE alignment terms per batch: 0 (the paper) scores "
                                 "every distinct user or item of the batch against every other; N > 0 scores N "
                                 "of them, drawn uniformly, against every other (an unbiased estimate of the "
                                 "same loss and gradient on an N x distinct matrix; the generation chain keeps "
                                 "every anchor; docs/DESIGN.md, 'Other named deviations')")
    seed: int = option(2024, "random seed of initialisation, sampling and masks")

    def __post_init__(self) -> None:
        choices = {"imputation": ("mean", "zero"), "generation_space": ("propagated", "raw"),
                   "generator": ("contrastive", "paper"), "gen_chain_scope": ("all", "generator"),
                   "gen_training": ("joint", "after"),
                   "fusion": ("paper", "gated"),
                   "untrained_items": ("content-neighbours", "paper"),
                   "training_mode": ("paper-exact", "batch-local", "auto"), "cf_propagation": ("exact", "cached"),
                   "feature_precision": ("auto", "float32", "bfloat16")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise DataError(None, f"config option {name} must be one of {allowed}, got {getattr(self, name)!r}")
        for f in fields(self):
            value, kind = getattr(self, f.name), type(f.default)
            ok = (isinstance(value, bool) if kind is bool else
                  isinstance(value, int) and not isinstance(value, bool) if kind is int else
                  isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else True)
            if not ok:
                raise DataError(None, f"config option {f.name} (--{f.name.replace('_', '-')}) must be "
                                      f"{kind.__name__}, got {value!r}")
        for name, (low, strict) in _BOUNDS.items():
            value = getattr(self, name)
            if not math.isfinite(value) or value < low or (strict and value == low):
                bound = f"> {low}" if strict else f">= {low}"
                raise DataError(None, f"config option {name} (--{name.replace('_', '-')}) must be {bound}, "
                                      f"got {value!r}")
        if self.feature_precision == "bfloat16" and self.train_features:
            raise DataError(None, "config options feature_precision bfloat16 (--feature-precision) and "
                                  "train_features (--train-features) exclude each other: rows that train stay "
                                  "float32")
        if self.avg_lambda > 1:
            raise DataError(None, f"config option avg_lambda (--avg-lambda) must be in [0, 1], got {self.avg_lambda!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> "DGMRecConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(source, f"unknown config option(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_saved(cls, data: dict[str, Any], source: str | None = None) -> "DGMRecConfig":
        """The config a checkpoint recorded: an option it lacks (the file predates the option) takes the value
        it had in effect before the option existed, which is not always today's default."""
        return cls.from_dict(with_predated(data), source)

    @classmethod
    def from_file(cls, path: str | Path) -> "DGMRecConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(path, f"cannot read config: {exc}") from exc
        if not isinstance(data, dict):
            raise DataError(path, "config must be a JSON object")
        return cls.from_dict(data, source=str(path))


# Options whose default changed after they were added, or that were added to name what an older version did:
# their behaviour before they existed (a checkpoint without the key was trained that way).
PREDATED: dict[str, Any] = {"gen_training": "joint", "stop_rising_sigmas": 0.0, "feature_precision": "float32"}


def with_predated(saved: dict[str, Any]) -> dict[str, Any]:
    """``saved`` (a checkpoint's config dict) with the options it predates set to their behaviour then."""
    return {**{k: v for k, v in PREDATED.items() if k not in saved}, **saved}


# Lower bounds of the numeric options: (bound, strict); strict means the bound itself is refused.
_BOUNDS: dict[str, tuple[float, bool]] = {
    "embedding_size": (0, True), "n_ui_layers": (0, False), "n_mm_layers": (0, False), "knn_k": (0, True),
    "additive": (0, False), "avg_lambda": (0, False), "refresh_every": (0, True), "inter_modal": (0, False),
    "inter_modal_temp": (0, True), "intra_modal": (0, False), "intra_modal_temp": (0, True), "align_bm": (0, False),
    "align_bm_temp": (0, True), "recon": (0, False), "reg": (0, False), "reg_id": (0, False), "sampler": (0, False),
    "club_steps": (0, False), "club_lr": (0, True), "lr": (0, True), "batch_size": (0, True), "epochs": (0, True),
    "patience": (0, True), "stop_rising_sigmas": (0, False), "eval_every": (0, True), "gen_temp": (0, True),
    "gen_weight": (0, False), "gen_refit_steps": (0, False), "nce_anchors": (0, False),
}
