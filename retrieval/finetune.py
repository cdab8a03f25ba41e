"""Contrastive fine-tuning of an open_clip model on a catalog's own (image, text) pairs.

Pretrained CLIP weights cannot be downloaded everywhere (not on this machine), and a general CLIP
knows nothing of a shop's vocabulary anyway. :func:`finetune_clip` trains (from scratch, or from
``base_pretrained`` weights) on the items that have both an image and a text, with the symmetric CLIP
loss, and writes a checkpoint that ``open_clip.create_model_and_transforms(model_name,
pretrained=<checkpoint>)`` and :class:`retrieval.encoders.ClipEncoder` load, plus a JSON sidecar with
the training record and held-out text->image recall.
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms
from tqdm import tqdm

from dgmrec_core.atomic import atomic_path, atomic_write_text
from dgmrec_core.errors import DataError
from retrieval.catalog import load_catalog
from retrieval.encoders import ClipEncoder

MIN_PAIRS = 20
EVAL_FRACTION = 0.1
SCRATCH_LR = 1e-3
PRETRAINED_LR = 1e-5
_CLAUSE = re.compile(r"[.,;!?](?:\s|$)")


def finetune_clip(catalog_csv: str | Path, out_path: str | Path, *, model_name: str = "dgmrec-compact",
                  base_pretrained: str | None = None, epochs: int = 20, batch_size: int = 32,
                  lr: float | None = None, seed: int = 0, device: str | None = None) -> dict[str, Any]:
    """Train ``model_name`` contrastively on the catalog's (image, text) pairs; save it to ``out_path``.

    ``base_pretrained`` is an open_clip tag or checkpoint file to start from (None: random init).
    ``lr`` defaults to 1e-3 from scratch and 1e-5 from pretrained weights. A random 10% of the pairs
    is held out to measure text->image recall@1/@10. Returns the record also written to
    ``out_path + ".json"``.
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
    n_eval = max(2, round(EVAL_FRACTION * len(both)))
    eval_rows, train_rows = order[:n_eval], order[n_eval:]

    # torch's thread count as set (OMP_NUM_THREADS, --threads) is kept: never every core regardless
    encoder = ClipEncoder(model_name, pretrained=base_pretrained, device=device, seed=seed)
    model = encoder.model
    losses = _train(model, encoder.device, [catalog.image_paths[i] for i in train_rows],
                    [catalog.texts[i] for i in train_rows], encoder.tokenizer, _train_transform(model),
                    epochs=epochs, batch_size=min(batch_size, len(train_rows)), lr=lr, seed=seed)
    model.eval()
    recall = _recall(encoder, [catalog.texts[i] for i in eval_rows], [catalog.image_paths[i] for i in eval_rows])
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(out_path) as tmp:
        torch.save(state, tmp)

    record = {
        "model_name": model_name, "base_pretrained": base_pretrained, "checkpoint": out_path.name,
        "catalog": str(catalog.source), "n_items": catalog.n_items, "n_skipped_problems": len(problems),
        "n_train_pairs": len(train_rows), "n_eval_pairs": len(eval_rows), "epochs": epochs,
        "batch_size": batch_size, "lr": lr, "seed": seed, "final_loss": losses[-1], "loss_curve": losses,
        "eval_recall_at_1": recall[1], "eval_recall_at_10": recall[10],
        "logit_scale": round(model.logit_scale.exp().item(), 3), "seconds": round(time.time() - started, 1),
    }
    atomic_write_text(str(out_path) + ".json", json.dumps(record, indent=2) + "\n")
    return record


def _train_transform(model: torch.nn.Module) -> transforms.Compose:
    """Random crop and flip at the model's input size; no colour changes (colour is an attribute)."""
    cfg = model.visual.preprocess_cfg
    size = cfg["size"] if isinstance(cfg["size"], int) else tuple(cfg["size"])
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.85, 1.18),
                                     interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(cfg["mean"], cfg["std"]),
    ])


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of shuffled full batches (``batch_size <= n``); the short remainder is dropped, since a
    contrastive loss on a tiny batch is mostly noise."""
    perm = rng.permutation(n)
    return [perm[b * batch_size:(b + 1) * batch_size] for b in range(n // batch_size)]


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
    steps_per_epoch = len(images) // batch_size
    total, warmup = epochs * steps_per_epoch, max(1, epochs * steps_per_epoch // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    schedules = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in optimisers]
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
                pixels = torch.stack([augment(_rgb(images[i])) for i in batch]).to(device)
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
            tqdm.write(f"fine-tune epoch {epoch + 1}/{epochs}: loss {curve[-1]:.4f}")
    finally:
        if sparse:
            embedding.sparse = False
        if flushing:
            torch.set_flush_denormal(False)
    return curve


def _text_view(text: str, rng: np.random.Generator) -> str:
    """Half the time the text's first clause only, so short queries look like training texts."""
    if rng.random() < 0.5:
        head = _CLAUSE.split(text, maxsplit=1)[0].strip()
        if head:
            return head
    return text


def _clip_loss(model: torch.nn.Module, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the batch with the model's learnt temperature."""
    image = F.normalize(model.encode_image(pixels), dim=-1)
    text = F.normalize(encode_text_trimmed(model, tokens), dim=-1)
    logits = model.logit_scale.exp() * image @ text.T
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


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


def _rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def _recall(encoder: ClipEncoder, texts: list[str], images: list[Path]) -> dict[int, float]:
    """Text->image recall@1 and @10 among the held-out pairs (each text's own image is the target)."""
    text_feats = encoder.encode_texts(texts)
    image_feats = encoder.encode_images(images)
    own = np.einsum("ij,ij->i", text_feats, image_feats)
    rank = np.concatenate([(text_feats[s:s + 1024] @ image_feats.T > own[s:s + 1024, None]).sum(axis=1)
                           for s in range(0, len(texts), 1024)])  # in blocks: no n x n matrix
    return {k: round(float(np.mean(rank < k)), 4) for k in (1, 10)}
