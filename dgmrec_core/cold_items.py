"""Items without training interactions (docs/DESIGN.md, "Untrained items", deviation 4): their
collaborative embedding from their content neighbours, inside the training graph (new items of the
new-item setting, a catalog's cold items) and for items added after training. A mixin of ``DGMRec``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class UntrainedItemsMixin:
    """Collaborative embeddings of untrained items from their trained content neighbours."""

    def content_neighbour_ids(self, e_i: torch.Tensor) -> torch.Tensor:
        """``e_i`` with the rows of untrained items replaced by the weighted mean of their trained neighbours'
        rows over every modality's kNN graph (docs/DESIGN.md, "Untrained items"): an item nobody has
        interacted with gets the collaborative embedding of the items its image and text resemble, in
        place of an ID embedding left at its random initialisation. Rows with no trained neighbour stay."""
        cold = self.untrained_items()
        if not bool(cold.any()):
            return e_i
        trained = (~cold).to(e_i.dtype)[:, None]
        keys = [f"mm_{m}" for m in range(self.n_modalities)]
        total = sum(self.product(k, e_i * trained) for k in keys)
        weight = sum(self.product(k, trained) for k in keys)
        fill = cold & (weight[:, 0] > 0)
        return torch.where(fill[:, None], total / weight.clamp(min=1e-12), e_i)

    @torch.no_grad()
    def cold_item_embeddings(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Fused embeddings of items outside the training graph, from (completed) raw features alone.

        They have no interactions, so the catalog's mean preference stands in for f. Their collaborative
        part is, as for untrained items inside the graph (``untrained_items``), the weighted mean of their
        ``knn_k`` most similar trained items' per modality; none with ``untrained_items='paper'``.
        """
        M = self.n_modalities
        g = [self.mean_filter(m) * self.general(m, feats[m]) for m in range(M)]
        s = [self.mean_filter(m) * self.specific(m, feats[m]) for m in range(M)]
        if self.config.untrained_items == "paper":
            return self.with_modalities(torch.zeros(()), g, s)
        return self.with_modalities(self._neighbour_ids_of(feats), g, s)

    def _neighbour_ids_of(self, feats: list[torch.Tensor], chunk: int = 1024) -> torch.Tensor:
        """Per new row: the weighted mean (cosine weights, clamped at 0) of the collaborative embeddings of
        its ``knn_k`` nearest trained items in each modality; zero where no trained item is similar."""
        e_i = self.cf_embeddings()[1]
        trained = ~self.untrained_items()
        n = feats[0].shape[0]
        total, weight = e_i.new_zeros(n, e_i.shape[1]), e_i.new_zeros(n, 1)
        for m in range(self.n_modalities):
            pool = torch.nonzero(trained & self.observed[:, m]).squeeze(1)
            if not len(pool):
                continue
            ref = F.normalize(self.features(m)[pool], dim=1)
            for start in range(0, n, chunk):
                query = F.normalize(feats[m][start:start + chunk].float(), dim=1)
                sims, idx = (query @ ref.T).topk(min(self.config.knn_k, len(pool)), dim=1)
                w = sims.clamp(min=0)
                total[start:start + chunk] += (w[..., None] * e_i[pool[idx]]).sum(1)
                weight[start:start + chunk] += w.sum(1, keepdim=True)
        return torch.where(weight > 0, total / weight.clamp(min=1e-12), total)
