"""Content-only training: DGMRec's generation modules on the items' own modality pairs, without users.

A catalog without interactions has no users, hence no preference (f = 0 for every item), no
collaborative branch and nothing to recommend. What needs no users still trains, in the model's own
class (a ``DGMRec`` with zero users): the general and specific encoders, the cross-modal translators,
the specific generators (on f = 0 they learn a constant specific part) and the decoders, on the items
that observe both modalities of a pair. The losses are the contrastive generator's (docs/DESIGN.md
"Generation") without the user terms: the whole chain ``decoder_b([translator_ab(g_a), gen_b(0)])``
against the item's real ``x_b`` (InfoNCE + MSE, ``gen_weight``), the part-wise translator and specific
generator MSE (``additive``), the inter-modal InfoNCE of general parts (``inter_modal``) and the
reconstruction of observed rows (``recon``). Training runs ``config.epochs`` seeded epochs of item
mini-batches (no validation: there is nothing to validate on); then the calibration is fitted and the
missing rows generated, so ``generated_features`` and ``query_to_modality`` answer as usual.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import DGMRecConfig
from .data import Dataset
from .errors import DataError
from .graphs import KnnFn, chunked_cosine_knn
from .losses import info_nce, perturb
from .model import DGMRec
from .trainer import TrainResult, seed_everything

MIN_STEPS_PER_EPOCH = 8
NO_USERS = "no users (a catalog without interactions): content-only training, nothing to validate on"


def item_batch_size(n: int, requested: int) -> int:
    """Items per batch: ``requested``, made smaller so that an epoch over ``n`` items has at least
    ``MIN_STEPS_PER_EPOCH`` steps (and never below 2, the least an InfoNCE batch needs)."""
    return max(2, min(requested, math.ceil(n / MIN_STEPS_PER_EPOCH)))


def fit_content(dataset: Dataset, config: DGMRecConfig, *, knn_fn: KnnFn = chunked_cosine_knn,
                progress: bool = True) -> TrainResult:
    """Train a zero-user DGMRec's generation modules on ``dataset``'s items for ``config.epochs`` epochs.

    ``dataset`` has no users (``n_users == 0``, empty splits). Needs the contrastive generator and at
    least two items observing two modalities. Returns a ``TrainResult`` with the last model (eval
    mode), per-epoch losses in ``history`` and empty metrics.
    """
    if dataset.n_users != 0:
        raise ValueError(f"content-only training is for catalogs without users; this dataset has {dataset.n_users}")
    if not config.use_modalities or config.generator != "contrastive":
        raise DataError(None, "a catalog without interactions trains the contrastive generator only "
                              "(generator 'contrastive', use_modalities on)", field="generator")
    observed = dataset.observed
    pairs = observed.sum(1) >= 2
    if int(pairs.sum()) < 2:
        raise DataError(None, f"a catalog without interactions learns generation from items that have both an "
                              f"image and a text; {int(pairs.sum())} of {dataset.n_items} items have both "
                              "(at least 2 needed)")
    # Without users there is no recommendation to protect: the contrastive chain is all there is to train.
    config = replace(config, gen_training="joint")
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    model = DGMRec(config, 0, dataset.n_items, [m.dim for m in dataset.modalities],
                   [m.name for m in dataset.modalities])
    model.attach(dataset, knn_fn)
    params = [p for n, p in model.named_parameters()
              if not n.startswith(("club.", "user_emb.", "item_emb.", "preference."))]
    opt = torch.optim.Adam(params, lr=config.lr)
    rows = np.flatnonzero(observed.any(1))
    batch = item_batch_size(len(rows), config.batch_size)
    n_batches = math.ceil(len(rows) / batch)
    history: list[dict[str, Any]] = []
    bar = tqdm(range(config.epochs), desc="content training", unit="epoch", disable=not progress)
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        order = rng.permutation(rows)
        sums: dict[str, float] = {}
        for b in range(n_batches):
            loss, terms = content_loss(model, torch.as_tensor(order[b * batch:(b + 1) * batch]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
        history.append({"epoch": epoch + 1, "seconds": time.perf_counter() - t0,
                        "loss": {k: v / n_batches for k, v in sums.items()}})
        bar.set_postfix(loss=f"{sum(history[-1]['loss'].values()):.4f}")
    model.eval()
    model.generate_missing()  # fits the calibration, then fills the missing rows
    return TrainResult(model, history, best_epoch=config.epochs, validation_problem=NO_USERS)


def content_loss(model: DGMRec, items: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The user-free generation loss of a batch of ``items`` and its named terms (preference f = 0)."""
    c, M = model.config, model.n_modalities
    obs = model.observed[items]
    x = [model.features(m)[items] for m in range(M)]
    g = [model.general(m, x[m]) for m in range(M)]
    s = [model.specific(m, x[m]) for m in range(M)]
    f = torch.zeros(len(items), c.embedding_size)
    zero = f.new_zeros(())
    chain = gen = inter = recon = zero
    for a in range(M):
        for b in range(M):
            both = obs[:, a] & obs[:, b]
            if a == b or int(both.sum()) < 2:
                continue
            chain = chain + model._chain_loss(a, b, g[a][both], f[0], x[b][both])
            gen = gen + F.mse_loss(model.translate(a, b, perturb(g[a][both])), g[b][both])
            if a < b:
                inter = inter + info_nce(g[a][both], g[b][both], c.inter_modal_temp)
    for m in range(M):
        has = obs[:, m]
        if has.any():
            gen = gen + F.mse_loss(model.gen_specific[m](f[has]), s[m][has])
            x_hat = model.decode(m, g[m][has].detach(), s[m][has].detach(), noise=True)
            recon = recon + F.mse_loss(x_hat, x[m][has])
    terms = {"chain": c.gen_weight * chain, "gen": c.additive * gen, "inter": c.inter_modal * inter,
             "recon": c.recon * recon}
    return sum(terms.values()), {k: float(v.detach()) for k, v in terms.items()}
