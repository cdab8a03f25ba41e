"""Training: seeded BPR batches, per-epoch generation and graph refresh, early stopping, checkpoints."""
from __future__ import annotations

import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import dataset_fingerprint, model_shape, model_state, read_checkpoint, restore_state, save_checkpoint
from .config import DGMRecConfig
from .data import Dataset, Interactions
from .errors import DataError
from .graphs import KnnFn, chunked_cosine_knn
from .metrics import evaluate_ranking
from .lightgcn import LightGCN, build_model

KS = (10, 20, 50)
SELECT = "recall@20"
MIN_VALID_SHARE = 0.5  # below this share of training users with a validation item, no early stopping


class SparseValidationWarning(UserWarning):
    """The validation split cannot select an epoch: training runs a fixed number of epochs instead."""


class NegativeSampler:
    """Uniform negatives among the items with a training interaction, outside each user's training items,
    vectorised (a few rejection rounds). Items with no training interaction (the new-item setting's, or a
    catalog's cold items) are never drawn, as in the reference code (MMRec samples from the training
    items): otherwise every step pushes their content-based scores down and they can never be recommended."""

    def __init__(self, train: np.ndarray, n_items: int, rng: np.random.Generator) -> None:
        self.n_items, self.rng = n_items, rng
        self.keys = np.unique(train[:, 0].astype(np.int64) * n_items + train[:, 1])
        self.candidates = np.unique(train[:, 1]).astype(np.int64)

    def _draw(self, size: int) -> np.ndarray:
        return self.candidates[self.rng.integers(0, len(self.candidates), size=size)]

    def sample(self, users: np.ndarray) -> np.ndarray:
        neg = self._draw(len(users))
        for _ in range(20):
            keys = users.astype(np.int64) * self.n_items + neg
            pos = np.searchsorted(self.keys, keys).clip(max=len(self.keys) - 1)
            bad = np.nonzero(self.keys[pos] == keys)[0]
            if not len(bad):
                break
            neg[bad] = self._draw(len(bad))
        return neg


@dataclass
class TrainResult:
    """The trained (best-validation) model, per-epoch history and final metrics."""

    model: LightGCN
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    valid: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    test_new_items: dict[str, float] | None = None
    validation_problem: str | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def evaluate(model: LightGCN, dataset: Dataset, split: str, *, new_items_only: bool = False) -> dict[str, float]:
    """Full-ranking Recall/NDCG/Hit@10/20/50 on ``split`` ('valid' or 'test'), training items excluded."""
    model.eval()
    users, items = model.final_embeddings()
    inter = dataset.interactions
    item_filter = dataset.new_items if new_items_only else None
    return evaluate_ranking(lambda u: users[u] @ items.T, inter.n_items, inter.train, getattr(inter, split),
                            ks=KS, item_filter=item_filter)


def sparse_validation_problem(inter: Interactions) -> str | None:
    """Why the validation split is too sparse to stop on (empty, or most training users have no validation
    item, e.g. when most users have a single interaction), or None when it can drive early stopping."""
    if len(inter.valid) == 0:
        return "the validation split is empty"
    train_users = np.unique(inter.train[:, 0])
    share = float(np.isin(train_users, inter.valid[:, 0]).mean()) if len(train_users) else 0.0
    if share < MIN_VALID_SHARE:
        return f"only {share:.1%} of the {len(train_users)} training users have a validation item"
    return None


RESUMABLE = ("epochs",)  # options a resumed run may change (e.g. to train longer)


def config_changes(saved: dict[str, Any], config: DGMRecConfig) -> str:
    """'' when ``config`` matches the ``saved`` config dict, else the differing keys as 'key: old -> new'."""
    wanted = config.to_dict()
    keys = sorted(k for k in set(saved) | set(wanted) if k not in RESUMABLE and saved.get(k) != wanted.get(k))
    return ", ".join(f"{k}: {saved.get(k)!r} -> {wanted.get(k)!r}" for k in keys)


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state(), "python": random.getstate()}


def _set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


def fit(dataset: Dataset, config: DGMRecConfig, *, checkpoint: str | Path | None = None, resume: bool = False,
        knn_fn: KnnFn = chunked_cosine_knn, progress: bool = True) -> TrainResult:
    """Train DGMRec (or a baseline, by ``config``) on ``dataset``; early stopping on valid Recall@20.

    Validation runs every ``eval_every`` epochs and at the last epoch. When the validation split is too
    sparse to stop on (:func:`sparse_validation_problem`), one :class:`SparseValidationWarning` is issued
    and training runs ``config.epochs`` epochs without early stopping, keeping the last model.
    With ``checkpoint``, the state is saved atomically after every evaluation; ``resume`` continues
    from it (the checkpoint's data fingerprint must match ``dataset``).
    """
    inter = dataset.interactions
    if len(inter.train) == 0:
        raise DataError(None, "the training split is empty")
    problem = sparse_validation_problem(inter)
    if problem is not None:
        warnings.warn(f"{problem}: too sparse to stop early on validation {SELECT}; training a fixed "
                      f"{config.epochs} epochs (set epochs / --epochs) and keeping the last model",
                      SparseValidationWarning, stacklevel=2)
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    model = build_model(config, inter.n_users, inter.n_items, [m.dim for m in dataset.modalities],
                        [m.name for m in dataset.modalities])
    model.attach(dataset, knn_fn)
    opt = torch.optim.Adam(model.main_parameters(), lr=config.lr)
    estimators = model.estimator_parameters()
    club_opt = torch.optim.Adam(estimators, lr=config.club_lr) if estimators else None
    fingerprint = dataset_fingerprint(dataset)
    history: list[dict[str, Any]] = []
    best_score, best_epoch, best_state, stale, start = -1.0, -1, model_state(model), 0, 0

    if resume and checkpoint is not None and Path(checkpoint).exists():
        payload = read_checkpoint(checkpoint)
        if payload["fingerprint"] != fingerprint:
            raise DataError(checkpoint, "checkpoint was trained on different data (fingerprint mismatch)")
        changed = config_changes(payload.get("config", {}), config)
        if changed:
            raise DataError(checkpoint, f"cannot resume with other settings than the checkpoint's: {changed}; "
                                        "give the same options, or train into a new --out")
        cur = payload["current"]
        restore_state(model, cur["state"])
        opt.load_state_dict(cur["opt"])
        if club_opt is not None:
            club_opt.load_state_dict(cur["club_opt"])
        _set_rng_state(rng, cur["rng"])
        history, best_state = payload["history"], payload["best"]
        best_score, best_epoch, stale, start = cur["best_score"], payload["best_epoch"], cur["stale"], cur["epoch"] + 1

    sampler = NegativeSampler(inter.train, inter.n_items, rng)
    n_batches = max(1, -(-len(inter.train) // config.batch_size))
    saved: dict[str, Any] | None = None  # the last checkpoint payload written
    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        model.train()
        model.begin_epoch(club_opt, epoch, knn_fn)
        order = rng.permutation(len(inter.train))
        sums: dict[str, float] = {}
        bar = tqdm(range(n_batches), desc=f"epoch {epoch + 1}", leave=False, disable=not progress)
        for b in bar:
            rows = order[b * config.batch_size:(b + 1) * config.batch_size]
            users = inter.train[rows, 0]
            batch = (torch.as_tensor(users), torch.as_tensor(inter.train[rows, 1]),
                     torch.as_tensor(sampler.sample(users)))
            loss, terms = model.loss(*batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix({k: f"{v / (b + 1):.4f}" for k, v in sums.items()})
        model.end_epoch()
        record: dict[str, Any] = {"epoch": epoch + 1, "seconds": time.perf_counter() - t0,
                                  "loss": {k: v / n_batches for k, v in sums.items()}}
        validate = (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs
        if validate and len(inter.valid):
            record["valid"] = evaluate(model, dataset, "valid")
        if validate and problem is not None:
            best_epoch, best_state = epoch + 1, model_state(model)
        elif validate:
            if record["valid"][SELECT] > best_score:
                best_score, best_epoch, best_state, stale = record["valid"][SELECT], epoch + 1, model_state(model), 0
            else:
                stale += 1
        history.append(record)
        if progress:
            valid = record.get("valid", {}).get(SELECT)
            tqdm.write(f"epoch {epoch + 1}: loss {sum(record['loss'].values()):.4f} "
                       f"({record['seconds']:.2f}s)" + (f" valid {SELECT} {valid:.4f}" if valid is not None else ""))
        if checkpoint is not None and validate:
            save_checkpoint(checkpoint, saved := {
                "config": config.to_dict(), "shape": model_shape(model), "fingerprint": fingerprint,
                "history": history, "best": best_state, "best_epoch": best_epoch,
                "current": {"state": model_state(model), "opt": opt.state_dict(),
                            "club_opt": club_opt.state_dict() if club_opt is not None else None,
                            "rng": _rng_state(rng), "epoch": epoch, "best_score": best_score, "stale": stale}})
        if stale >= config.patience:
            break

    restore_state(model, best_state)
    model.finish_training(config.seed)  # DGMRec: the generation refit (scores unchanged)
    if model.n_modalities and config.generation and config.gen_refit_steps:
        if checkpoint is not None and saved is not None:
            save_checkpoint(checkpoint, {**saved, "best": model_state(model)})
    valid = evaluate(model, dataset, "valid") if len(inter.valid) else {}
    result = TrainResult(model, history, best_epoch, valid, evaluate(model, dataset, "test"),
                         validation_problem=problem)
    if dataset.new_items is not None and len(dataset.new_items):
        result.test_new_items = evaluate(model, dataset, "test", new_items_only=True)
    return result
