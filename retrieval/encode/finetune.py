"""Contrastive fine-tuning of an open_clip model on a catalog's own (image, text) pairs.

Pretrained CLIP weights cannot be downloaded everywhere (not on this machine), and a general CLIP
knows nothing of a shop's vocabulary anyway. :func:`finetune_clip` trains (from scratch, or from
``base_pretrained`` weights) on the items that have both an image and a text, with the symmetric CLIP
loss, and writes a checkpoint that ``open_clip.create_model_and_transforms(model_name,
pretrained=<checkpoint>)`` and :class:`retrieval.encode.clip.ClipEncoder` load, plus a JSON sidecar with
the training record and held-out text->image recall.
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torchvision import transforms
from tqdm import tqdm

from dgmrec_core.atomic import atomic_path, atomic_write_text
from dgmrec_core.errors import DataError
from retrieval.catalog import load_catalog
from retrieval.defaults import FINETUNE_BATCH, FINETUNE_EPOCHS, PRETRAINED_LR, SCRATCH_LR
from retrieval.encode.clip import ClipEncoder
from retrieval.images import open_rgb

log = logging.getLogger("dgmrec.encode")
_CLIP_LOSS = ClipLoss()
MIN_PAIRS = 20
EVAL_FRACTION = 0.1  # held out for the recall figure: at least this share of the pairs ...
EVAL_MIN = 20  # ... and at least this many where a fifth of the pairs allows it (chance recall@10 <= 0.5)
MIN_STEPS_PER_EPOCH = 8
RANDOM_LOSS_SHARE = 0.9  # a final loss above this share of ln(batch) (the loss of random features) failed
COLLAPSE_COSINE = 0.99  # mean pairwise cosine of image features above this: the encoder collapsed
NEAR_CHANCE = 0.25  # a held-out recall less than this share of the way from chance to 1 is 'near chance'
_CLAUSE = re.compile(r"[.,;!?](?:\s|$)")


def finetune_clip(catalog_csv: str | Path, out_path: str | Path, *, model_name: str = "dgmrec-compact",
                  base_pretrained: str | None = None, epochs: int = FINETUNE_EPOCHS, batch_size: int = FINETUNE_BATCH,
                  lr: float | None = None, seed: int = 0, device: str | None = None) -> dict[str, Any]:
    """Train ``model_name`` contrastively on the catalog's (image, text) pairs; save it to ``out_path``.

    ``base_pretrained`` is an open_clip tag or checkpoint file to start from (None: random init).
    ``lr`` defaults to ``SCRATCH_LR`` from scratch and ``PRETRAINED_LR`` from pretrained weights. A
    seeded share of the pairs (:func:`eval_size`) is held out to measure text->image recall@1/@10, with
    chance beside them; ``batch_size`` is the most pairs per batch (:func:`batch_for`). The record's
    ``failed`` lists why the result must not be used (loss at the random level, collapsed features),
    ``warnings`` what makes its figures weak. Returns the record also written to ``out_path + ".json"``.
    """
    started = time.time()
    out_path = Path(out_path)
    catalog, problems = load_catalog(catalog_csv, skip_bad=True)
    both = np.flatnonzero(catalog.has_text & catalog.has_image)
    if len(both) < MIN_PAIRS:
        raise DataError(catalog.source, f"fine-tuning needs at least {MIN_PAIRS} items with both an image "
                        f"and a text, found {len(both)}")
    if epochs < 1 or batch_size < 2:
        raise ValueError(f"need epochs >= 1 and batch_size >= 2, got {epochs} and {batch_size}")
    lr = lr if lr is not None else (SCRATCH_LR if base_pretrained is None else PRETRAINED_LR)
    order = np.random.default_rng(seed).permutation(both)
    n_eval = eval_size(len(both))
    eval_rows, train_rows = order[:n_eval], order[n_eval:]
    batch = batch_for(len(train_rows), batch_size)

    # torch's thread count as set (OMP_NUM_THREADS, --threads) is kept: never every core regardless
    encoder = ClipEncoder(model_name, pretrained=base_pretrained, device=device, seed=seed)
    model = encoder.model
    losses = _train(model, encoder.device, [catalog.image_paths[i] for i in train_rows],
                    [catalog.texts[i] for i in train_rows], encoder.tokenizer, _train_transform(model),
                    epochs=epochs, batch_size=batch, lr=lr, seed=seed)
    model.eval()
    recall, image_cosine = _recall(encoder, [catalog.texts[i] for i in eval_rows],
                                   [catalog.image_paths[i] for i in eval_rows])
    chance = {k: round(min(1.0, k / n_eval), 4) for k in (1, 10)}
    random_loss = round(math.log(batch), 5)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(out_path) as tmp:
        torch.save(state, tmp)

    record = {
        "model_name": model_name, "base_pretrained": base_pretrained, "checkpoint": out_path.name,
        "catalog": str(catalog.source), "n_items": catalog.n_items, "n_skipped_problems": len(problems),
        "n_train_pairs": len(train_rows), "n_eval_pairs": len(eval_rows), "epochs": epochs,
        "batch_size": batch, "batch_size_requested": batch_size, "steps_per_epoch": len(_spans(len(train_rows), batch)),
        "lr": lr, "seed": seed, "final_loss": losses[-1], "random_loss": random_loss, "loss_curve": losses,
        "eval_recall_at_1": recall[1], "chance_recall_at_1": chance[1],
        "eval_recall_at_10": recall[10], "chance_recall_at_10": chance[10],
        "image_feature_mean_cosine": image_cosine,
        "failed": failure_reasons(losses[-1], batch, image_cosine),
        "warnings": weak_figures(recall, chance, n_eval),
        "logit_scale": round(model.logit_scale.exp().item(), 3), "seconds": round(time.time() - started, 1),
    }
    atomic_write_text(str(out_path) + ".json", json.dumps(record, indent=2) + "\n")
    return record


def _train_transform(model: torch.nn.Module) -> transforms.Compose:
    """Random crop and flip at the model's input size; no colour changes (colour is an attribute).

    Not open_clip's ``AugmentationCfg`` transform: without timm it neither flips nor takes an aspect
    ratio range, and the catalog's small pictures need both."""
    cfg = model.visual.preprocess_cfg
    size = cfg["size"] if isinstance(cfg["size"], int) else tuple(cfg["size"])
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.85, 1.18),
                                     interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(cfg["mean"], cfg["std"]),
    ])


def eval_size(n_pairs: int) -> int:
    """Pairs held out for the recall figure: ``EVAL_FRACTION`` of them, at least 2, and ``EVAL_MIN`` where
    that leaves four fifths for training, so chance recall@10 (10 / held-out pairs) stays well below 1."""
    return max(2, round(EVAL_FRACTION * n_pairs), min(EVAL_MIN, n_pairs // 5))


def batch_for(n_train: int, most: int) -> int:
    """Pairs per batch: at most ``most``, small enough for ``MIN_STEPS_PER_EPOCH`` steps an epoch, at least 2."""
    return max(2, min(most, n_train // MIN_STEPS_PER_EPOCH))


def _spans(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of an epoch's batches: full batches, then the remainder unless it is a single pair
    (a contrastive batch of one has no negative)."""
    spans = [(start, start + batch_size) for start in range(0, n - batch_size + 1, batch_size)]
    rest = n - len(spans) * batch_size
    if rest >= 2:
        spans.append((n - rest, n))
    return spans


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of shuffled batches over ``n`` pairs (see ``_spans``)."""
    perm = rng.permutation(n)
    return [perm[start:end] for start, end in _spans(n, batch_size)]


def failure_reasons(final_loss: float, batch_size: int, image_cosine: float) -> list[str]:
    """Why a fine-tuned encoder must not be used: its loss stayed near the random level ln(batch), or its
    image features collapsed onto one direction. Empty when neither."""
    reasons = []
    random_loss = math.log(batch_size)
    if final_loss > RANDOM_LOSS_SHARE * random_loss:
        reasons.append(f"the training loss stayed at the random level (final {final_loss:.3f}, random "
                       f"ln({batch_size}) = {random_loss:.3f}): it learnt nothing")
    if image_cosine > COLLAPSE_COSINE:
        reasons.append(f"the image features collapsed (mean pairwise cosine {image_cosine:.4f} > {COLLAPSE_COSINE}): "
                       "every image looks the same to it")
    return reasons


def weak_figures(recall: dict[int, float], chance: dict[int, float], n_eval: int) -> list[str]:
    """Warnings on held-out figures that say little: chance at 1, or recall near chance."""
    out = []
    if chance[10] >= 1:
        out.append(f"only {n_eval} held-out pairs: recall@10 is 1.0 by chance; judge by recall@1 "
                   f"(chance {chance[1]:.3f}) or fine-tune on more pairs")
    for k in (1, 10):
        if chance[k] < 1 and recall[k] - chance[k] < NEAR_CHANCE * (1 - chance[k]):
            out.append(f"held-out recall@{k} {recall[k]:.3f} is near chance ({chance[k]:.3f}): less than "
                       f"{NEAR_CHANCE:.0%} of the way from chance to 1")
    return out


def _train(model: torch.nn.Module, device: torch.device, images: list[Path], texts: list[str],
           tokenizer: Any, augment: transforms.Compose, *, epochs: int, batch_size: int, lr: float,
           seed: int) -> list[float]:
    """AdamW with warm-up and cosine decay on the symmetric InfoNCE loss; returns per-epoch mean losses.

    The token embedding (49k rows, of which a catalog uses a few hundred) gets sparse gradients and
    its own lazy Adam, so a step costs what the used rows cost, not the whole vocabulary. Denormal
    floats are flushed to zero while training (and the default restored after).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimisers, embedding = _optimisers(model, device, lr)
    schedules = _schedules(optimisers, epochs * len(_spans(len(images), batch_size)))
    sparse = embedding is not None
    model.train()
    if sparse:
        embedding.sparse = True
    flushing = torch.set_flush_denormal(True)  # denormal floats slow CPU optimiser steps a hundredfold
    curve = []
    try:
        for epoch in range(epochs):
            bar = tqdm(_batches(len(images), batch_size, rng), unit="batch", leave=False,
                       desc=f"fine-tune epoch {epoch + 1}/{epochs}")
            epoch_losses = []
            for batch in bar:
                pixels = torch.stack([augment(open_rgb(images[i])) for i in batch]).to(device)
                tokens = tokenizer([_text_view(texts[i], rng) for i in batch]).to(device)
                loss = _clip_loss(model, pixels, tokens)
                for optimiser in optimisers:
                    optimiser.zero_grad(set_to_none=True)
                loss.backward()
                for optimiser, schedule in zip(optimisers, schedules):
                    optimiser.step()
                    schedule.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, math.log(100))
                epoch_losses.append(loss.item())
                bar.set_postfix(loss=f"{np.mean(epoch_losses):.3f}")
            bar.close()
            curve.append(round(float(np.mean(epoch_losses)), 5))
            log.info(f"fine-tune epoch {epoch + 1}/{epochs}: loss {curve[-1]:.4f}")
    finally:
        if sparse:
            embedding.sparse = False
        if flushing:
            torch.set_flush_denormal(False)
    return curve


def _optimisers(model: torch.nn.Module, device: torch.device,
                lr: float) -> tuple[list[torch.optim.Optimizer], torch.nn.Embedding | None]:
    """AdamW (weight decay on matrices only) and, for the token embedding, a lazy SparseAdam; returns the
    optimisers and the embedding that gets sparse gradients (None when the model has none)."""
    embedding = getattr(model, "token_embedding", None)
    sparse = [embedding.weight] if isinstance(embedding, torch.nn.Embedding) else []
    dense = [(n, p) for n, p in model.named_parameters() if p.requires_grad and not any(p is q for q in sparse)]
    decays = [p.ndim >= 2 and "embedding" not in n for n, p in dense]
    optimisers: list[torch.optim.Optimizer] = [torch.optim.AdamW(
        [{"params": [p for (_, p), d in zip(dense, decays) if d], "weight_decay": 0.1},
         {"params": [p for (_, p), d in zip(dense, decays) if not d], "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.98), fused=device.type in ("cpu", "cuda"))]
    if sparse:
        optimisers.append(torch.optim.SparseAdam(sparse, lr=lr, betas=(0.9, 0.98)))
    return optimisers, embedding if sparse else None


def _schedules(optimisers: list[torch.optim.Optimizer], total: int) -> list[torch.optim.lr_scheduler.LambdaLR]:
    """Linear warm-up over the first tenth of ``total`` steps, then cosine decay to zero."""
    warmup = max(1, total // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in optimisers]


def _text_view(text: str, rng: np.random.Generator) -> str:
    """Half the time the text's first clause only, so short queries look like training texts."""
    if rng.random() < 0.5:
        head = _CLAUSE.split(text, maxsplit=1)[0].strip()
        if head:
            return head
    return text


def _clip_loss(model: torch.nn.Module, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the batch with the model's learnt temperature (open_clip's ``ClipLoss``)."""
    image = F.normalize(model.encode_image(pixels), dim=-1)
    text = F.normalize(encode_text_trimmed(model, tokens), dim=-1)
    return _CLIP_LOSS(image, text, model.logit_scale.exp())


def encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` without the padding columns after the batch's longest text.

    With a causal mask and end-of-text pooling the padding never reaches the pooled feature, so cutting
    it gives the same output for a fraction of the cost (texts are much shorter than 77 tokens). Models
    that do not have that structure go through ``encode_text`` unchanged.
    """
    mask = getattr(model, "attn_mask", None)
    if getattr(model, "text_pool_type", None) != "argmax" or mask is None or not hasattr(model, "token_embedding"):
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1  # the last end-of-text position (the highest token id)
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.ln_final(model.transformer(x, attn_mask=mask[:length, :length]))
    x = x[torch.arange(len(x), device=x.device), tokens.argmax(dim=-1)]
    proj = model.text_projection
    return x if proj is None else proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


def _ranks(texts: np.ndarray, images: np.ndarray, start: int) -> np.ndarray:
    """0-based rank of each text's own image (row ``start + i``) among all images; ties count against it,
    so identical (collapsed) features rank last, not first."""
    rows = np.arange(len(texts))
    sims = texts @ images.T
    own = sims[rows, start + rows].copy()
    sims[rows, start + rows] = -np.inf
    return (sims >= own[:, None]).sum(axis=1)


def _recall(encoder: ClipEncoder, texts: list[str], images: list[Path]) -> tuple[dict[int, float], float]:
    """Text->image recall@1 and @10 among the held-out pairs (each text's own image is the target), and
    the mean pairwise cosine of their image features (near 1: collapsed)."""
    text_feats = encoder.encode_texts(texts)
    image_feats = encoder.encode_images(images)
    n = len(image_feats)
    total = float(np.linalg.norm(image_feats.sum(0)) ** 2)  # unit rows: sum of all pairwise cosines, diagonal too
    mean_cosine = round((total - float(np.einsum("ij,ij->", image_feats, image_feats))) / (n * (n - 1)), 5)
    rank = np.concatenate([_ranks(text_feats[s:s + 1024], image_feats, s)
                           for s in range(0, len(texts), 1024)])  # in blocks: no n x n matrix
    return {k: round(float(np.mean(rank < k)), 4) for k in (1, 10)}, mean_cosine
