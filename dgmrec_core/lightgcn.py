"""LightGCN (He et al., 2020): the collaborative model that DGMRec extends, and the no-modality baseline.

ID embeddings of users and items propagated on the symmetric-normalised user-item graph; the score of
(user, item) is the dot product of the layer means. Graphs are sparse CSR, built by ``attach`` from the
training split and carried in checkpoints by ``graph_state``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .config import DGMRecConfig
from .data import Dataset
from .graphs import KnnFn, bipartite_norm_adj, chunked_cosine_knn, mean_aggregators, sparse_product
from .losses import bpr_loss, l2_norms


@dataclass
class Parts:
    """Every representation the loss and the scores read: the collaborative (LightGCN) embeddings ``e_u``,
    ``e_i`` and, per modality (empty for LightGCN), the general ``g`` and specific ``s`` parts of the items,
    their preference filters ``f``, the filtered parts propagated on the modality graphs (``gf``, ``sf``) and
    their means over each user's items (``gu``, ``su``). Rows are all users / all items, or, in the
    batch-local training mode, the rows that mode computed (the others hold cached values)."""

    e_u: torch.Tensor
    e_i: torch.Tensor
    g: list[torch.Tensor] = field(default_factory=list)
    s: list[torch.Tensor] = field(default_factory=list)
    f: list[torch.Tensor] = field(default_factory=list)
    gf: list[torch.Tensor] = field(default_factory=list)
    sf: list[torch.Tensor] = field(default_factory=list)
    gu: list[torch.Tensor] = field(default_factory=list)
    su: list[torch.Tensor] = field(default_factory=list)
    x: list[torch.Tensor] = field(default_factory=list)  # the feature rows of those items, per modality


class LightGCN(nn.Module):
    """LightGCN over ``n_users`` x ``n_items``; the per-epoch hooks the trainer calls do nothing here.

    ``dims`` and ``names`` (the data's modalities) are only recorded, so checkpoints of every model have the
    same shape."""

    GRAPH_KEYS = ("norm_adj", "user_mean", "item_mean")

    def __init__(self, config: DGMRecConfig, n_users: int, n_items: int, dims: list[int] = (),
                 names: list[str] = ()) -> None:
        super().__init__()
        self.config, self.n_users, self.n_items = config, n_users, n_items
        self.names, self.dims = list(names), list(dims)
        self.epochs_generated = 0
        d = config.embedding_size
        self.user_emb = nn.Embedding(n_users, d)
        self.item_emb = nn.Embedding(n_items, d)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)
        self.graphs: dict[str, torch.Tensor] = {}
        self._transposed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def n_modalities(self) -> int:
        return 0

    def main_parameters(self) -> list[nn.Parameter]:
        """Parameters of the main optimiser."""
        return list(self.parameters())

    def estimator_parameters(self) -> list[nn.Parameter]:
        """Parameters with an optimiser of their own (DGMRec's CLUB estimators); none here."""
        return []

    # ----------------------------------------------------------------- graphs
    def attach(self, dataset: Dataset, knn_fn: KnnFn = chunked_cosine_knn, *, take_features: bool = False) -> None:
        """Build the user-item graphs from ``dataset``'s training split (``knn_fn`` and ``take_features`` are
        for subclasses)."""
        train = dataset.interactions.train
        graphs = {"norm_adj": bipartite_norm_adj(self.n_users, self.n_items, train)}
        graphs["user_mean"], graphs["item_mean"] = mean_aggregators(self.n_users, self.n_items, train)
        self.graphs = {k: g.to_sparse_csr() for k, g in graphs.items()}

    def graph_state(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, tuple[int, int]]]:
        """The sparse graphs as COO (indices, values, shape), for checkpoints."""
        coo = {k: g.to_sparse_coo().coalesce() for k, g in self.graphs.items()}
        return {k: (g.indices(), g.values(), tuple(g.shape)) for k, g in coo.items()}

    def load_graph_state(self, state: dict) -> None:
        """Graphs from ``graph_state`` output; kept as CSR, whose products are several times faster."""
        self.graphs = {k: torch.sparse_coo_tensor(i, v, s, check_invariants=False).coalesce().to_sparse_csr()
                       for k, (i, v, s) in state.items()}

    def product(self, key: str, h: torch.Tensor) -> torch.Tensor:
        """graphs[key] @ h; with gradients, through CsrProduct and a transpose cached per graph object."""
        return sparse_product(self.graphs[key], h, lambda: self._transpose(key))

    def _transpose(self, key: str) -> torch.Tensor:
        """The CSR transpose of graphs[key], made once per graph object."""
        graph = self.graphs[key]
        cached = self._transposed.get(key)
        if cached is None or cached[0] is not graph:
            cached = self._transposed[key] = (graph, graph.t().to_sparse_csr())
        return cached[1]

    def untrained_items(self) -> torch.Tensor:
        """Bool (n_items,): items without a training interaction (the new-item setting's, a catalog's cold
        items), read off the item-mean graph (rows with no user), so loaded models know them too."""
        graph = self.graphs["item_mean"]
        if getattr(self, "_untrained", (None,))[0] is not graph:
            self._untrained = (graph, graph.crow_indices().diff() == 0)
        return self._untrained[1]

    # --------------------------------------------------------- representations
    def id_embeddings(self) -> torch.Tensor:
        """Layer 0 of the user-item graph: the users' ID embeddings, then the items'."""
        return torch.cat([self.user_emb.weight, self.item_emb.weight])

    def cf_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """LightGCN: mean over layers of propagation on the normalised bipartite graph."""
        h = self.id_embeddings()
        total = h
        for _ in range(self.config.n_ui_layers):  # a running sum: two layers alive at a time, not all of them
            h = self.product("norm_adj", h)
            total = total + h
        out = total / (self.config.n_ui_layers + 1)
        return out[: self.n_users], out[self.n_users:]

    def forward_parts(self) -> Parts:
        """Everything the loss and the scores need, for all users and items."""
        return Parts(*self.cf_embeddings())

    def fuse(self, parts: Parts) -> tuple[torch.Tensor, torch.Tensor]:
        """The user and item embeddings that score(u, i) = u . i reads."""
        return parts.e_u, parts.e_i

    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused user and item embeddings; score(u, i) = u . i."""
        return self.fuse(self.forward_parts())

    # -------------------------------------------------------------------- loss
    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """BPR on the batch plus L2 on its collaborative embeddings; the total and its named terms."""
        parts = self.forward_parts()
        fu, fi = self.fuse(parts)
        terms = {"bpr": bpr_loss(fu[users], fi[pos], fi[neg]),
                 "reg": self.config.reg_id * l2_norms(parts.e_u[users], parts.e_i[pos], parts.e_i[neg])}
        total = sum(terms.values())
        return total, {k: float(v.detach()) for k, v in terms.items()}

    # ------------------------------------------------ trainer hooks (no-ops)
    def begin_epoch(self, estimator_optimizer: torch.optim.Optimizer | None, epoch: int,
                    knn_fn: KnnFn = chunked_cosine_knn) -> None:
        """Whole-catalog work before an epoch's batches (DGMRec: CLUB, generation, graph refresh)."""

    def end_epoch(self) -> None:
        """Work after an epoch's batches (DGMRec: the generator's calibration)."""

    def finish_training(self, seed: int) -> None:
        """Work once the best state is restored (DGMRec: the generation refit)."""


def build_model(config: DGMRecConfig, n_users: int, n_items: int, dims: list[int], names: list[str]) -> LightGCN:
    """The model ``config`` asks for: LightGCN with ``use_modalities`` off, else DGMRec over the modalities."""
    if not config.use_modalities:
        return LightGCN(config, n_users, n_items, dims, names)
    from .model import DGMRec

    return DGMRec(config, n_users, n_items, dims, names)
