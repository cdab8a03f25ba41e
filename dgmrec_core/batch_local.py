"""Batch-local training (docs/DESIGN.md, "Batch-local training", deviation 5).

The paper's code recomputes every item's modality representations on every batch: the encoders over all
raw features, the preference filters, the kNN propagation and the users' means. Here a batch computes
them only for its own distinct items C (positives and negatives) and users B:

- g, s and f for the rows C (the encoders' cost now grows with the batch, not the catalog);
- each propagation layer at C as ``A[C, :] @ H``, where H is the previous layer with C's fresh rows
  and every other row read from a cache (``A[C,:] @ cache + A[C,C] @ (fresh - cache[C])``), so the
  gradient flows through C's rows;
- the users' means at B the same way, from the propagated layer;
- the catalog's mean preference (the contrastive generator's specific input) from the cache;
- the collaborative (LightGCN) embeddings: whole-graph and exact (``cf_propagation`` 'exact'), or, with
  'cached', at the batch's users and items only, the same way on the user-item graph: layer 0 is the live ID
  embeddings, layers 1..L-1 of the other nodes come from the cache.

The cache holds every layer of every item (and, with cached collaborative layers, layers 1..L-1 of every
user and item node); it is filled by one whole-catalog pass per epoch (after the generation and graph
refresh, which need every item anyway) and each batch writes its fresh rows back. Untrained items never
enter a batch (the sampler draws trained items), so the content-neighbour fill of their IDs is not needed
while training.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .generator import catalog_mean
from .graphs import column_block, csr_rows, sparse_product
from .lightgcn import Parts


@dataclass
class LocalBatch:
    """A BPR batch's distinct users and items (global ids, sorted) and its triples as positions among them."""

    users: torch.Tensor
    items: torch.Tensor
    user_rows: torch.Tensor
    pos_rows: torch.Tensor
    neg_rows: torch.Tensor

    @classmethod
    def of(cls, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> "LocalBatch":
        distinct_users, user_rows = torch.unique(users, return_inverse=True)
        items, item_rows = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        return cls(distinct_users, items, user_rows, item_rows[: len(pos)], item_rows[len(pos):])

    def nodes(self, n_users: int) -> torch.Tensor:
        """The batch's users and items as nodes of the user-item graph (users first, items offset by
        ``n_users``): sorted, as ``column_block`` and the cache writes expect."""
        return torch.cat([self.users, self.items + n_users])


@dataclass
class PropagationCache:
    """Per modality, every propagation layer (0..n_mm_layers) of the filtered general (``g``) and specific
    (``s``) parts of every item, and the catalog's mean preference ``pref``; detached."""

    g: list[list[torch.Tensor]] = field(default_factory=list)
    s: list[list[torch.Tensor]] = field(default_factory=list)
    pref: list[torch.Tensor] = field(default_factory=list)
    cf: list[torch.Tensor] | None = None  # collaborative layers 1..L-1 of every node (users, then items)
    n_users: int = 0

    def propagated(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The last layers: the propagated filtered general and specific parts of every item, per modality."""
        return [layers[-1] for layers in self.g], [layers[-1] for layers in self.s]

    def write(self, batch: LocalBatch, fresh: "PropagationCache") -> None:
        """Write the batch's fresh layers (rows ``batch.items``) into the cache."""
        with torch.no_grad():
            for cached, new in ((self.g, fresh.g), (self.s, fresh.s)):
                for layers, new_layers in zip(cached, new):
                    for layer, rows in zip(layers, new_layers):
                        layer[batch.items] = rows.detach()
            if self.cf is not None and fresh.cf is not None:
                nodes = batch.nodes(self.n_users)
                for layer, rows in zip(self.cf, fresh.cf):
                    layer[nodes] = rows.detach()


@torch.no_grad()
def fill_cache(model) -> PropagationCache:
    """The cache from one whole-catalog pass of ``model`` (a DGMRec)."""
    cache = PropagationCache(n_users=model.n_users)
    f = model.item_filters()
    for m in range(model.n_modalities):
        for kind, part in zip(("g", "s"), model.encoded(m, model.features(m))):
            layers = [f[m] * part]
            for _ in range(model.config.n_mm_layers):
                layers.append(model.product(f"mm_{m}", layers[-1]))
            getattr(cache, kind).append(layers)
        cache.pref.append(catalog_mean(f[m]))
    if model.config.cf_propagation == "cached":
        h, cache.cf = model.id_embeddings(), []
        for _ in range(model.config.n_ui_layers - 1):
            h = model.product("norm_adj", h)
            cache.cf.append(h)
    return cache


def _with_fresh_rows(rows: torch.Tensor, block: torch.Tensor, fresh: torch.Tensor, cached: torch.Tensor,
                     items: torch.Tensor) -> torch.Tensor:
    """``rows @ H`` where H is ``cached`` with the rows ``items`` replaced by ``fresh`` (``block``: the columns
    ``items`` of ``rows``), without building H: the gradient flows through ``fresh`` only."""
    return torch.sparse.mm(rows, cached) + sparse_product(block, fresh - cached[items])


def _propagate(graph_rows: torch.Tensor, block: torch.Tensor, fresh: torch.Tensor, cached: list[torch.Tensor],
               items: torch.Tensor) -> list[torch.Tensor]:
    """Layers 0..len(cached) at the rows ``items`` from layer 0 ``fresh``: layer l+1 = A[C,:] @ (layer l with
    C fresh), where ``cached[l]`` holds layer l of every row."""
    layers = [fresh]
    for layer in cached:
        layers.append(_with_fresh_rows(graph_rows, block, layers[-1], layer, items))
    return layers


def _local_cf(model, cache: PropagationCache,
              batch: LocalBatch) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]:
    """The collaborative embeddings of the batch's users and items, and the fresh layers 1..L-1 of those nodes
    to write back (None when the propagation is whole-graph)."""
    if cache.cf is None:
        e_u, e_i = model.cf_embeddings()
        return e_u[batch.users], e_i[batch.items], None
    nodes = batch.nodes(model.n_users)
    graph_rows = csr_rows(model.graphs["norm_adj"], nodes)
    block = column_block(graph_rows, nodes)
    fresh = torch.cat([model.user_emb(batch.users), model.item_emb(batch.items)])
    inputs = [model.id_embeddings().detach(), *cache.cf][: model.config.n_ui_layers]  # layers 0..L-1
    layers = _propagate(graph_rows, block, fresh, inputs, nodes)
    mean = torch.stack(layers).mean(0)
    return mean[: len(batch.users)], mean[len(batch.users):], layers[1:-1]


def local_parts(model, cache: PropagationCache, batch: LocalBatch) -> tuple[Parts, PropagationCache]:
    """``model``'s parts at the batch's rows (users ``batch.users``, items ``batch.items``) and the fresh
    layers to write back into ``cache`` once the loss is built."""
    e_u, e_i, fresh_cf = _local_cf(model, cache, batch)
    parts = Parts(e_u, e_i)
    fresh = PropagationCache(cf=fresh_cf)
    items = batch.items
    item_users = csr_rows(model.graphs["item_mean"], items)
    user_items = csr_rows(model.graphs["user_mean"], batch.users)
    user_block = column_block(user_items, items)
    for m in range(model.n_modalities):
        x = model.training_rows(m, items)
        g, s = model.encoded(m, x)
        f = sparse_product(item_users, model.user_filter(m))
        graph_rows = csr_rows(model.graphs[f"mm_{m}"], items)
        block = column_block(graph_rows, items)
        g_layers = _propagate(graph_rows, block, f * g, cache.g[m][:-1], items)
        s_layers = _propagate(graph_rows, block, f * s, cache.s[m][:-1], items)
        fresh.g.append(g_layers)
        fresh.s.append(s_layers)
        parts.x.append(x)
        parts.g.append(g)
        parts.s.append(s)
        parts.f.append(f)
        parts.gf.append(g_layers[-1])
        parts.sf.append(s_layers[-1])
        parts.gu.append(_with_fresh_rows(user_items, user_block, g_layers[-1], cache.g[m][-1], items))
        parts.su.append(_with_fresh_rows(user_items, user_block, s_layers[-1], cache.s[m][-1], items))
    return parts, fresh
