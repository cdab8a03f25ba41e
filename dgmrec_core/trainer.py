"""Training: seeded BPR batches, per-epoch generation and graph refresh, early stopping, checkpoints."""
from __future__ import annotations

import logging
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import (compact_state, dataset_fingerprint, model_shape, model_state, read_checkpoint,
                         restore_state, save_checkpoint)
from .config import DGMRecConfig, with_predated
from .data import Dataset, Interactions
from .errors import DataError
from .feature_rows import bf16_pays
from .graphs import KnnFn, chunked_cosine_knn
from .metrics import evaluate_ranking
from .stopping import should_stop
from .lightgcn import LightGCN, build_model

log = logging.getLogger("dgmrec.train")

KS = (10, 20, 50)
SELECT = "recall@20"
REPLICATE_ENV = "DGMREC_DP_REPLICATE"  # =1: every rank trains on the whole batch (a check; TrainingRun._batches)
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


RESUMABLE = ("epochs", "stop_rising_sigmas")  # options a resumed run may change: when it stops, not how it trains


def config_changes(saved: dict[str, Any], config: DGMRecConfig) -> str:
    """'' when ``config`` matches the ``saved`` config dict, else the differing keys as 'key: old -> new'.

    An option the saved config lacks (a checkpoint older than the option) matches the value it had then
    (``config.PREDATED``), else its default."""
    wanted = config.to_dict()
    saved = {**DGMRecConfig().to_dict(), **with_predated(saved)}
    keys = sorted(k for k in set(saved) | set(wanted) if k not in RESUMABLE and saved.get(k) != wanted.get(k))
    return ", ".join(f"{k}: {saved.get(k)!r} -> {wanted.get(k)!r}" for k in keys)


def _rng_state(rng: np.random.Generator, device: torch.device = distributed.CPU) -> dict[str, Any]:
    state = {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(rng: np.random.Generator, state: dict[str, Any], device: torch.device = distributed.CPU) -> None:
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def place(model: LightGCN, device: torch.device) -> LightGCN:
    """``model`` with its weights, buffers and sparse graphs on ``device`` (a no-op on the CPU it is on)."""
    model.to(device)
    model.graphs = {k: g.to(device) for k, g in model.graphs.items()}
    return model


@dataclass
class _Stopping:
    """The early-stopping state a checkpoint carries: history, best validation so far, stale validations."""

    best_state: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_score: float = -1.0
    best_epoch: int = -1
    stale: int = 0
    start: int = 0  # the first epoch to train


class TrainingRun:
    """One training run of :func:`fit`: the model, its optimisers and random streams, the stopping state.

    Under torchrun every rank holds an identical model: the per-epoch whole-catalog work runs on every
    rank from the same random state, each global batch's rows are split across the ranks, and the
    gradients are averaged before each step. Validation runs on rank 0 and its figures are broadcast, so
    every rank takes the same early-stopping decision."""

    def __init__(self, dataset: Dataset, config: DGMRecConfig, ctx: distributed.Context, knn_fn: KnnFn,
                 problem: str | None, *, checkpoint: Path | None, progress: bool, take_features: bool = False) -> None:
        self.dataset, self.config, self.ctx, self.knn_fn, self.problem = dataset, config, ctx, knn_fn, problem
        self.checkpoint, self.progress = checkpoint, progress and ctx.is_main
        inter = dataset.interactions
        seed_everything(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.fingerprint = dataset_fingerprint(dataset)  # before attach: with take_features it changes the data
        model = build_model(config, inter.n_users, inter.n_items, [m.dim for m in dataset.modalities],
                            [m.name for m in dataset.modalities])
        model.attach(dataset, knn_fn, take_features=take_features)
        self.model = place(model, ctx.device)
        self.opt = torch.optim.Adam(model.main_parameters(), lr=config.lr)
        estimators = model.estimator_parameters()
        self.club_opt = torch.optim.Adam(estimators, lr=config.club_lr) if estimators else None
        self.state = _Stopping(best_state=model_state(model, compact=True))  # the changing feature rows only
        self.sampler: NegativeSampler | None = None
        self.saved = False  # whether a checkpoint was written
        if ctx.distributed and ctx.is_main:
            log.info("training data-parallel: each batch of %d split over %d processes", config.batch_size, ctx.world)
        if config.use_modalities and ctx.is_main and bf16_pays(config.feature_precision, ctx.device) \
                and not config.train_features:
            log.info("training batches read the feature rows in bfloat16 (--feature-precision %s; float32: "
                     "--feature-precision float32)", config.feature_precision)

    def resume(self) -> None:
        """Continue from the checkpoint (every rank reads the same file)."""
        payload = read_checkpoint(self.checkpoint)
        if payload["fingerprint"] != self.fingerprint:
            raise DataError(self.checkpoint, "checkpoint was trained on different data (fingerprint mismatch)")
        changed = config_changes(payload.get("config", {}), self.config)
        if changed:
            raise DataError(self.checkpoint, f"cannot resume with other settings than the checkpoint's: {changed}; "
                                             "give the same options, or train into a new --out")
        cur = payload["current"]
        self._restore(cur["state"])
        self.opt.load_state_dict(cur["opt"])
        if self.club_opt is not None:
            self.club_opt.load_state_dict(cur["club_opt"])
        _set_rng_state(self.rng, cur["rng"], self.ctx.device)
        self.state = _Stopping(best_state=compact_state(self.model, payload["best"]), history=payload["history"],
                               best_score=cur["best_score"], best_epoch=payload["best_epoch"], stale=cur["stale"],
                               start=cur["epoch"] + 1)

    def _restore(self, state: dict[str, Any]) -> None:
        restore_state(self.model, state)
        place(self.model, self.ctx.device)

    def epoch(self, epoch: int) -> None:
        """Train one epoch, then validate (and checkpoint) when it is a validation epoch."""
        t0 = time.perf_counter()
        self.model.train()
        distributed.sync_torch_rng(self.ctx)
        self.model.begin_epoch(self.club_opt, epoch, self.knn_fn)  # the whole-catalog work, on every rank
        if self.ctx.device.type == "cuda":
            # CUDA's atomic sums are not bit-reproducible: every rank takes rank 0's weights and buffers
            distributed.broadcast_tensors(self.ctx, list(self.model.state_dict().values()))
        sums, n_batches = self._batches(epoch)
        self.model.end_epoch()
        record: dict[str, Any] = {"epoch": epoch + 1, "seconds": time.perf_counter() - t0,
                                  "loss": {k: v / n_batches for k, v in sums.items()}}
        validate = (epoch + 1) % self.config.eval_every == 0 or epoch + 1 == self.config.epochs
        if validate:
            self._validate(epoch, record)
        self.state.history.append(record)
        valid = record.get("valid", {}).get(SELECT)
        waiting = valid is not None and self.state.stale >= self.config.patience and not self.stop()
        if self.progress:
            tqdm.write(f"epoch {epoch + 1}: loss {sum(record['loss'].values()):.4f} "
                       f"({record['seconds']:.2f}s)" + (f" valid {SELECT} {valid:.4f}" if valid is not None else "")
                       + (" (still climbing: going on)" if waiting else ""))
        elif valid is not None and self.ctx.is_main:  # without a progress bar, a log line per validation
            log.info("epoch %d: valid %s %.4f (best %.4f at epoch %d, %d of %d validations without a better one%s)",
                     epoch + 1, SELECT, valid, self.state.best_score, self.state.best_epoch, self.state.stale,
                     self.config.patience, "; still climbing: going on" if waiting else "")
        if self.checkpoint is not None and validate and self.ctx.is_main:
            self._save(epoch)

    def _batches(self, epoch: int) -> tuple[dict[str, float], int]:
        """One pass over the shuffled training pairs in BPR batches; the summed loss terms and the batch count.

        Every rank draws the whole batch (order and negatives, so the random streams stay equal) and
        trains on its share of the rows; a share's loss is weighted by its size, so that the averaged
        gradient is the whole batch's for losses that are means over rows. With ``DGMREC_DP_REPLICATE=1``
        every rank trains on the whole batch instead: N times the work, and the run of one process bit for
        bit (a check of the data-parallel machinery; tests/test_distributed.py)."""
        inter, config, ctx = self.dataset.interactions, self.config, self.ctx
        n_batches = max(1, -(-len(inter.train) // config.batch_size))
        order = self.rng.permutation(len(inter.train))
        sums: dict[str, float] = {}
        replicate = ctx.distributed and os.environ.get(REPLICATE_ENV, "") == "1"
        bar = tqdm(range(n_batches), desc=f"epoch {epoch + 1}", leave=False, disable=not self.progress)
        for b in bar:
            rows = order[b * config.batch_size:(b + 1) * config.batch_size]
            users = inter.train[rows, 0]
            neg = self.sampler.sample(users)
            mine = slice(None) if replicate else ctx.shard(len(rows))
            weight = 1.0 if replicate else (mine.stop - mine.start) * ctx.world / len(rows)
            batch = (torch.as_tensor(users[mine]), torch.as_tensor(inter.train[rows[mine], 1]),
                     torch.as_tensor(neg[mine]))
            self.opt.zero_grad()
            terms: dict[str, float] = {}
            if weight > 0:
                loss, terms = self.model.loss(*(t.to(ctx.device) for t in batch))
                (loss if weight == 1 else loss * weight).backward()
            distributed.average_gradients(ctx, [p for g in self.opt.param_groups for p in g["params"]])
            self.opt.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v * weight
            bar.set_postfix({k: f"{v / (b + 1):.4f}" for k, v in sums.items()})
        return _mean_over_ranks(ctx, sums), n_batches

    def _validate(self, epoch: int, record: dict[str, Any]) -> None:
        """Validation figures into ``record`` (computed on rank 0, known to all) and the stopping state."""
        st, inter = self.state, self.dataset.interactions
        if len(inter.valid):
            valid = evaluate(self.model, self.dataset, "valid") if self.ctx.is_main else None
            record["valid"] = distributed.broadcast_object(self.ctx, valid)
        if self.problem is not None:
            st.best_epoch, st.best_state = epoch + 1, model_state(self.model, compact=True)
        elif record["valid"][SELECT] > st.best_score:
            st.best_score, st.best_epoch = record["valid"][SELECT], epoch + 1
            st.best_state = model_state(self.model, compact=True)
            st.stale = 0
        else:
            st.stale += 1

    def scores(self) -> list[float]:
        """The validation scores so far, in order."""
        return [h["valid"][SELECT] for h in self.state.history if SELECT in h.get("valid", {})]

    def stop(self) -> bool:
        """Whether the stopping rule ends training now (``stopping.should_stop``)."""
        return should_stop(self.state.stale, self.config.patience, self.scores(), self.config.stop_rising_sigmas)

    def _save(self, epoch: int) -> None:
        st, opt, club_opt = self.state, self.opt, self.club_opt
        save_checkpoint(self.checkpoint, {  # the live state, and the compact best (load_model completes it)
            "config": self.config.to_dict(), "shape": model_shape(self.model), "fingerprint": self.fingerprint,
            "history": st.history, "best": st.best_state, "best_epoch": st.best_epoch,
            "current": {"state": model_state(self.model, clone=False), "opt": opt.state_dict(),
                        "club_opt": club_opt.state_dict() if club_opt is not None else None,
                        "rng": _rng_state(self.rng, self.ctx.device), "epoch": epoch, "best_score": st.best_score,
                        "stale": st.stale}})
        self.saved = True

    def finish(self) -> TrainResult:
        """The best model (generation refitted, on every rank) and its final figures (computed on rank 0)."""
        model, config, ctx, dataset = self.model, self.config, self.ctx, self.dataset
        if not distributed.ranks_agree(ctx, list(model.state_dict().values())):
            log.warning("rank %d: the ranks' models differ after training (data-parallel runs keep them equal; "
                        "please report this)", ctx.rank)
        self._restore(self.state.best_state)
        distributed.sync_torch_rng(ctx)
        model.finish_training(config.seed)  # DGMRec: the generation refit (scores unchanged)
        if model.n_modalities and config.generation and config.gen_refit_steps:
            if self.checkpoint is not None and self.saved:  # the refitted best beside the file's other parts,
                payload = read_checkpoint(self.checkpoint, mmap=True)  # read lazily: no second copy in memory
                save_checkpoint(self.checkpoint, {**payload, "best": model_state(model, clone=False)})
        figures = None
        if ctx.is_main:
            valid = evaluate(model, dataset, "valid") if len(dataset.interactions.valid) else {}
            new = dataset.new_items is not None and len(dataset.new_items)
            figures = (valid, evaluate(model, dataset, "test"),
                       evaluate(model, dataset, "test", new_items_only=True) if new else None)
        valid, test, test_new = distributed.broadcast_object(ctx, figures)
        model.eval()
        return TrainResult(model, self.state.history, self.state.best_epoch, valid, test, test_new,
                           validation_problem=self.problem)


def _mean_over_ranks(ctx: distributed.Context, sums: dict[str, float]) -> dict[str, float]:
    """Per key, the mean of ``sums`` over the ranks (``sums`` itself in a single process)."""
    if not ctx.distributed:
        return sums
    every = distributed.gather_objects(ctx, sums)
    return {k: sum(s.get(k, 0.0) for s in every) / ctx.world for k in every[0]}


def fit(dataset: Dataset, config: DGMRecConfig, *, checkpoint: str | Path | None = None, resume: bool = False,
        knn_fn: KnnFn = chunked_cosine_knn, progress: bool = True, device: str | torch.device = "auto",
        take_features: bool = False) -> TrainResult:
    """Train DGMRec (or a baseline, by ``config``) on ``dataset``; early stopping on valid Recall@20.

    Validation runs every ``eval_every`` epochs and at the last epoch. When the validation split is too
    sparse to stop on (:func:`sparse_validation_problem`), one :class:`SparseValidationWarning` is issued
    and training runs ``config.epochs`` epochs without early stopping, keeping the last model.
    With ``checkpoint``, the state is saved atomically after every evaluation; ``resume`` continues
    from it (the checkpoint's data fingerprint must match ``dataset``).

    ``device`` ('auto', 'cpu', 'cuda', 'cuda:N'; ``dgmrec_core.distributed.resolve_device``) is where the
    model trains. Launched by torchrun with several processes, training is data-parallel
    (docs/DESIGN.md, "Data-parallel training"): every rank returns the same result; only rank 0 writes
    the checkpoint and shows progress.

    ``take_features``: the model shares ``dataset``'s feature arrays instead of copying them, and writes its
    imputed and generated rows into their unobserved rows (``DGMRec.attach``); half the memory for the
    features, for callers that do not read ``dataset``'s unobserved rows afterwards.
    """
    inter = dataset.interactions
    if len(inter.train) == 0:
        raise DataError(None, "the training split is empty")
    problem = sparse_validation_problem(inter)
    if problem is not None:
        warnings.warn(f"{problem}: too sparse to stop early on validation {SELECT}; training a fixed "
                      f"{config.epochs} epochs (set epochs / --epochs) and keeping the last model",
                      SparseValidationWarning, stacklevel=2)
    run = TrainingRun(dataset, config, distributed.init(device), knn_fn, problem, progress=progress,
                      checkpoint=None if checkpoint is None else Path(checkpoint), take_features=take_features)
    if resume and run.checkpoint is not None and run.checkpoint.exists():
        run.resume()
    run.sampler = NegativeSampler(inter.train, inter.n_items, run.rng)
    for epoch in range(run.state.start, config.epochs):
        if run.stop():  # checked first: a resumed run that had stopped stays stopped (under the same rule)
            break
        run.epoch(epoch)
    return run.finish()
