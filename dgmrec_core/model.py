"""The DGMRec model (DESIGN.md section 2) and its LightGCN collaborative branch.

One class serves both: with ``config.use_modalities`` off it is plain LightGCN (the no-modality
baseline); with ``config.generation`` off it keeps the mean-imputed features (the no-generation
baseline). Graphs are sparse and rebuilt by ``attach``; they travel in checkpoints via ``graph_state``.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .config import DGMRecConfig
from .data import Dataset
from .features import impute
from .graphs import (CsrProduct, KnnFn, bipartite_norm_adj, chunked_cosine_knn, mean_aggregators, modality_knn_graph,
                     normalised_knn, refresh_rows)
from .losses import CLUB, RowGroups, bpr_loss, info_nce, l2_norms, perturb



def _mlp(d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d))


def _catalog_mean(f: torch.Tensor) -> torch.Tensor:
    """Mean of item preference filters ``f`` (n, d) over the items with interactions (non-zero rows)."""
    has = f.abs().sum(1) > 0
    return f[has].mean(0) if has.any() else f.mean(0)


def _xavier(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)


class DGMRec(nn.Module):
    """DGMRec over ``len(names)`` modalities with feature dims ``dims``."""

    GRAPH_KEYS = ("norm_adj", "user_mean", "item_mean")

    def __init__(self, config: DGMRecConfig, n_users: int, n_items: int, dims: list[int], names: list[str]) -> None:
        super().__init__()
        self.config, self.n_users, self.n_items = config, n_users, n_items
        self.names, self.dims = list(names), list(dims)
        d = config.embedding_size
        self.user_emb = nn.Embedding(n_users, d)
        self.item_emb = nn.Embedding(n_items, d)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)
        if config.use_modalities:
            self.enc_general = nn.ModuleList(nn.Linear(dm, d) for dm in dims)
            self.shared = nn.Linear(d, d)
            self.enc_specific = nn.ModuleList(nn.Linear(dm, d) for dm in dims)
            self.preference = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in dims)
            self.decoder = nn.ModuleList(nn.Linear(2 * d, dm) for dm in dims)
            self.gen_specific = nn.ModuleList(_mlp(d) for _ in dims)
            self.translator = nn.ModuleDict({self.pair_key(a, b): _mlp(d) for a in range(len(dims))
                                             for b in range(len(dims)) if a != b})
            self.club = nn.ModuleList(CLUB(d) for _ in dims)
            _xavier(self)
            with torch.random.fork_rng():  # the generator's own copy of the general encoder, filled by the
                self.gen_enc_general = nn.ModuleList(nn.Linear(dm, d) for dm in dims)  # refit: draws no
                self.gen_shared = nn.Linear(d, d)  # random numbers, so the paper's runs stay as they were
            self.register_buffer("gen_refitted", torch.zeros((), dtype=torch.bool))
            for m, dm in enumerate(dims):
                feat = torch.zeros(n_items, dm)
                if config.train_features:
                    self.register_parameter(f"feat_{m}", nn.Parameter(feat))
                else:
                    self.register_buffer(f"feat_{m}", feat)
            self.register_buffer("observed", torch.ones(n_items, len(dims), dtype=torch.bool))
            for m, dm in enumerate(dims):  # generated -> real moments per dimension (identity until fitted)
                self.register_buffer(f"calib_{m}", torch.stack([torch.zeros(dm), torch.ones(dm),
                                                                torch.zeros(dm), torch.ones(dm)]))
        self.graphs: dict[str, torch.Tensor] = {}
        self._transposed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.epochs_generated = 0
        self._mean_filters: list[torch.Tensor] | None = None

    # ----------------------------------------------------------------- set-up
    def pair_key(self, src: int, dst: int) -> str:
        return f"{self.names[src]}2{self.names[dst]}"

    @property
    def n_modalities(self) -> int:
        return len(self.dims) if self.config.use_modalities else 0

    def features(self, m: int) -> torch.Tensor:
        return getattr(self, f"feat_{m}")

    @property
    def contrastive(self) -> bool:
        """The contrastive generator (the default) rather than the paper's."""
        return self.config.generator == "contrastive"

    @property
    def raw_generation(self) -> bool:
        """Translators and decoders learn on, and generate from, the encoders' own parts (not propagated)."""
        return self.contrastive or self.config.generation_space == "raw"

    def main_parameters(self) -> list[nn.Parameter]:
        """Parameters of the main optimiser: everything but the CLUB estimators."""
        club = {id(p) for p in self.club.parameters()} if self.n_modalities else set()
        return [p for p in self.parameters() if id(p) not in club]

    def attach(self, dataset: Dataset, knn_fn: KnnFn = chunked_cosine_knn) -> None:
        """Load the features (imputed) and build every graph from ``dataset``'s training split."""
        train = dataset.interactions.train
        graphs = {"norm_adj": bipartite_norm_adj(self.n_users, self.n_items, train)}
        graphs["user_mean"], graphs["item_mean"] = mean_aggregators(self.n_users, self.n_items, train)
        self.graphs = {k: g.to_sparse_csr() for k, g in graphs.items()}
        if not self.n_modalities:
            return
        with torch.no_grad():
            self.observed.copy_(torch.as_tensor(dataset.observed))
            for m, mod in enumerate(dataset.modalities):
                obs = self.observed[:, m]
                self.features(m).copy_(torch.as_tensor(impute(mod.values, mod.observed, self.config.imputation)))
                self.graphs[f"mm_{m}"] = modality_knn_graph(self.features(m), obs, self.config.knn_k, knn_fn,
                                                             observed_only=self.config.knn_observed_only).to_sparse_csr()

    def graph_state(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, tuple[int, int]]]:
        """The sparse graphs as COO (indices, values, shape), for checkpoints."""
        coo = {k: g.to_sparse_coo().coalesce() for k, g in self.graphs.items()}
        return {k: (g.indices(), g.values(), tuple(g.shape)) for k, g in coo.items()}

    def load_graph_state(self, state: dict) -> None:
        """Graphs from ``graph_state`` output; kept as CSR, whose products are several times faster."""
        self._mean_filters = None
        self.graphs = {k: torch.sparse_coo_tensor(i, v, s, check_invariants=False).coalesce().to_sparse_csr()
                       for k, (i, v, s) in state.items()}

    # --------------------------------------------------------- representations
    def product(self, key: str, h: torch.Tensor) -> torch.Tensor:
        """graphs[key] @ h; with gradients, through CsrProduct and a transpose cached per graph object."""
        graph = self.graphs[key]
        if not (torch.is_grad_enabled() and h.requires_grad):
            return torch.sparse.mm(graph, h)
        cached = self._transposed.get(key)
        if cached is None or cached[0] is not graph:
            cached = self._transposed[key] = (graph, graph.t().to_sparse_csr())
        return CsrProduct.apply(h, graph, cached[1])

    def cf_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """LightGCN: mean over layers of propagation on the normalised bipartite graph."""
        h = torch.cat([self.user_emb.weight, self.item_emb.weight])
        layers = [h]
        for _ in range(self.config.n_ui_layers):
            h = self.product("norm_adj", h)
            layers.append(h)
        out = torch.stack(layers).mean(0)
        return out[: self.n_users], out[self.n_users:]

    def general(self, m: int, x: torch.Tensor) -> torch.Tensor:
        """General part g_m = sigmoid(W_shared tanh(W_m x))."""
        return torch.sigmoid(self.shared(torch.tanh(self.enc_general[m](x))))

    def generation_general(self, m: int, x: torch.Tensor) -> torch.Tensor:
        """The general part generation translates: the generator's refitted copy of the general encoder
        once ``refit_generation`` ran, else the general encoder itself."""
        if not bool(self.gen_refitted):
            return self.general(m, x)
        return torch.sigmoid(self.gen_shared(torch.tanh(self.gen_enc_general[m](x))))

    def specific(self, m: int, x: torch.Tensor) -> torch.Tensor:
        """Specific part s_m = sigmoid(W'_m x)."""
        return torch.sigmoid(self.enc_specific[m](x))

    def user_filter(self, m: int, users: torch.Tensor | None = None) -> torch.Tensor:
        """tanh(P_m e_u): the modality preference of ``users`` (all users when None)."""
        emb = self.user_emb.weight if users is None else self.user_emb(users)
        return torch.tanh(self.preference[m](emb))

    def item_filters(self) -> list[torch.Tensor]:
        """f_m(i): mean user preference over the users who interacted with item i, per modality."""
        return [self.product("item_mean", self.user_filter(m)) for m in range(self.n_modalities)]

    def mean_filter(self, m: int) -> torch.Tensor:
        """Catalog-wide mean preference of modality m (items with interactions), shape (d,).

        Cached in eval mode (queries call it); recomputed while training.
        """
        if self.training or self._mean_filters is None:
            filters = [_catalog_mean(f) for f in self.item_filters()]
            if self.training:
                return filters[m]
            self._mean_filters = filters
        return self._mean_filters[m]

    def train(self, mode: bool = True) -> "DGMRec":
        self._mean_filters = None
        return super().train(mode)

    def propagate(self, m: int, h: torch.Tensor) -> torch.Tensor:
        for _ in range(self.config.n_mm_layers):
            h = self.product(f"mm_{m}", h)
        return h

    def to_users(self, h: torch.Tensor) -> torch.Tensor:
        return self.product("user_mean", h)

    def translate(self, src: int, dst: int, g: torch.Tensor) -> torch.Tensor:
        """Cross-modal translator of general parts: g_src -> g_dst."""
        return self.translator[self.pair_key(src, dst)](g)

    def decode(self, m: int, g: torch.Tensor, s: torch.Tensor, *, noise: bool = False) -> torch.Tensor:
        """Decoder_m([g, s]) -> raw feature of modality m; ``noise`` perturbs [g, s] first (training)."""
        gs = torch.cat([g, s], dim=1)
        return self.decoder[m](perturb(gs) if noise else gs)

    def untrained_items(self) -> torch.Tensor:
        """Bool (n_items,): items without a training interaction (the new-item setting's, a catalog's cold
        items), read off the item-mean graph (rows with no user), so loaded models know them too."""
        graph = self.graphs["item_mean"]
        if getattr(self, "_untrained", (None,))[0] is not graph:
            self._untrained = (graph, graph.crow_indices().diff() == 0)
        return self._untrained[1]

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

    def forward_parts(self) -> dict[str, object]:
        """Everything the loss and the scores need, for all users and items."""
        e_u, e_i = self.cf_embeddings()
        if self.n_modalities and self.config.untrained_items == "content-neighbours":
            e_i = self.content_neighbour_ids(e_i)
        out: dict[str, object] = {"e_u": e_u, "e_i": e_i}
        if not self.n_modalities:
            return out
        M = range(self.n_modalities)
        g = [self.general(m, self.features(m)) for m in M]
        s = [self.specific(m, self.features(m)) for m in M]
        f = self.item_filters()
        gf = [self.propagate(m, f[m] * g[m]) for m in M]
        sf = [self.propagate(m, f[m] * s[m]) for m in M]
        out.update(g=g, s=s, f=f, gf=gf, sf=sf, gu=[self.to_users(x) for x in gf], su=[self.to_users(x) for x in sf])
        return out

    def fuse(self, parts: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """u = e_u + (mean_m g_m(u) + sum_m s_m(u)) / (M + 1); the same for items."""
        if not self.n_modalities:
            return parts["e_u"], parts["e_i"]
        M = self.n_modalities
        users = parts["e_u"] + (torch.stack(parts["gu"]).mean(0) + torch.stack(parts["su"]).sum(0)) / (M + 1)
        items = parts["e_i"] + (torch.stack(parts["gf"]).mean(0) + torch.stack(parts["sf"]).sum(0)) / (M + 1)
        return users, items

    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused user and item embeddings; score(u, i) = u . i."""
        return self.fuse(self.forward_parts())

    # -------------------------------------------------------------------- loss
    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Total training loss of a BPR batch and its named terms."""
        c = self.config
        parts = self.forward_parts()
        fu, fi = self.fuse(parts)
        terms: dict[str, torch.Tensor] = {"bpr": bpr_loss(fu[users], fi[pos], fi[neg])}
        e_u, e_i = parts["e_u"], parts["e_i"]
        reg = c.reg_id * l2_norms(e_u[users], e_i[pos], e_i[neg])
        if self.n_modalities:
            terms.update(self._modality_terms(parts, users, pos, neg))
            reg = reg + c.reg * l2_norms(*[parts["gf"][m][pos] + parts["sf"][m][pos] for m in range(self.n_modalities)])
        terms["reg"] = reg
        total = sum(terms.values())
        return total, {k: float(v.detach()) for k, v in terms.items()}

    def _modality_terms(self, p: dict, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        c, M = self.config, self.n_modalities
        nce = partial(info_nce, bf16=c.bf16_logits)
        batch_items = torch.unique(torch.cat([pos, neg]))
        obs = self.observed[batch_items]
        U, P = RowGroups.of(users), RowGroups.of(pos)
        g, s, f, gf, sf, gu, su = (p[k] for k in ("g", "s", "f", "gf", "sf", "gu", "su"))
        raw = self.raw_generation
        tg, ds = (g, s) if raw else (gf, sf)  # translator targets; decoder's specific input
        inter = gen = chain = self.user_emb.weight.new_zeros(())
        for a in range(M):
            for b in range(M):
                if a == b:
                    continue
                both = batch_items[obs[:, a] & obs[:, b]]
                if len(both):
                    gen = gen + F.mse_loss(self.translate(a, b, perturb(tg[a][both])), tg[b][both])
                    if self.contrastive:
                        chain = chain + self._chain_loss(a, b, g[a][both], _catalog_mean(f[b]), self.features(b)[both])
                if a < b:
                    inter = inter + nce(g[a][both], g[b][both], c.inter_modal_temp)
                    inter = inter + nce(gu[a], gu[b], c.inter_modal_temp, U, U)
        means = [self.features(a)[batch_items[obs[:, a]]].mean(0) if obs[:, a].any() else None for a in range(M)]
        # (the preference chain reads f detached: it teaches generation to use the users' preference, and must
        # not bend the user embeddings toward content, which costs recommendation)
        for m in range(M):
            has = batch_items[obs[:, m]]
            if len(has):
                gen = gen + F.mse_loss(self.gen_specific[m](perturb(f[m][has])), s[m][has])
                if self.contrastive and M > 1:
                    chain = chain + self._preference_chain_loss(m, means, f[m][has].detach(), self.features(m)[has])
        club = sum(self.club[m](sf[m], gf[m]) for m in range(M))
        g_u, g_i = torch.stack(gu).sum(0), torch.stack(gf).sum(0)
        intra = nce(p["e_u"], p["e_i"], c.intra_modal_temp, U, P)
        intra = intra + nce(g_u, g_i, c.inter_modal_temp, U, P)
        for m in range(M):
            intra = intra + nce(su[m], sf[m], c.intra_modal_temp, U, P)
        bm = nce(p["e_i"], g_i, c.align_bm_temp, P, P) + nce(p["e_u"], g_u, c.align_bm_temp, U, U)
        recon = sum(self._recon(m, tg[m], ds[m], raw) for m in range(M))
        terms = {"inter": c.inter_modal * inter, "club": c.sampler * club, "gen": c.additive * gen,
                "recon": c.recon * recon, "intra": c.intra_modal * intra, "bm": c.align_bm * bm}
        if self.contrastive:
            terms["chain"] = c.gen_weight * chain
        return terms

    def _chain_loss(self, a: int, b: int, g_a: torch.Tensor, pref_b: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
        """The whole generation chain a -> b against the real features of the same items: InfoNCE (each
        generated row must pick its own item among the batch's real rows) plus MSE (scale and offset).

        The specific part comes from the catalog's mean preference ``pref_b`` (d,), as for queries: an item's
        own preference filter would let the decoder recognise training items by their users instead of
        learning from the content (on the sample shop: held-out Hit@10 0.61-0.74 with it, 0.91 without)."""
        s_b = self.gen_specific[b](pref_b).expand(g_a.shape[0], -1)
        x_hat = self.decode(b, self.translate(a, b, g_a), s_b)
        return info_nce(x_hat, x_b, self.config.gen_temp) + F.mse_loss(x_hat, x_b)

    def _content_free_general(self, b: int, source_means: list[torch.Tensor | None]) -> torch.Tensor | None:
        """The general part of modality b translated from the other modalities' mean observed features: what
        an item with no modality of its own gets (its identity then comes from its users' preference)."""
        parts = [self.translate(a, b, self.generation_general(a, x[None])) for a, x in enumerate(source_means)
                 if a != b and x is not None]
        return torch.stack(parts).mean(0) if parts else None

    def _preference_chain_loss(self, b: int, source_means: list[torch.Tensor | None], f_b: torch.Tensor,
                               x_b: torch.Tensor) -> torch.Tensor:
        """Generation of an item with no modality: decoder_b([content-free general part, gen_b(f_b)]) against
        its real features (InfoNCE + MSE), so the users' preference carries what it can of the item."""
        g = self._content_free_general(b, source_means)
        if g is None:
            return x_b.new_zeros(())
        x_hat = self.decode(b, g.expand(x_b.shape[0], -1), self.gen_specific[b](f_b))
        return info_nce(x_hat, x_b, self.config.gen_temp) + F.mse_loss(x_hat, x_b)

    def _recon(self, m: int, g: torch.Tensor, s: torch.Tensor, observed_only: bool) -> torch.Tensor:
        """MSE of decoder_m(perturbed, detached [g, s]) against the features: every row (the paper's code)
        or only rows that observe m (so the decoder never learns from its own generated rows)."""
        rows = self.observed[:, m] if observed_only else slice(None)
        x_hat = self.decode(m, g[rows].detach(), s[rows].detach(), noise=True)
        return F.mse_loss(x_hat, self.features(m)[rows])

    # --------------------------------------------------- per-epoch procedures
    def club_step(self, optimizer: torch.optim.Optimizer, steps: int, sample: int = 2048) -> float:
        """Fit the CLUB estimators on (specific, general) pairs of random items; returns the last loss."""
        with torch.no_grad():
            p = self.forward_parts()
        loss = torch.zeros(())
        for _ in range(steps):
            idx = torch.randperm(self.n_items)[:sample]
            loss = sum(self.club[m].learning_loss(p["sf"][m][idx], p["gf"][m][idx]) for m in range(self.n_modalities))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def generated_features(self, *, noise: bool = True) -> list[torch.Tensor]:
        """Generated raw features of every item and modality (the caller keeps the rows it needs).

        Paper generator: general part from the translators applied to the general parts of the item's
        observed modalities (all other modalities when it observes none), specific part gen_m(f_m), then
        decoder_m([g, s]); with ``generation_space`` 'propagated' (the paper's code) both parts are first
        propagated on the modality graph. Contrastive generator (docs/DESIGN.md): the same chain on the
        encoders' own parts with the catalog's preference for items with another modality, the
        content-free general part and the item's own preference for items with none, then calibrated.
        """
        raw = self._generate(noise)
        return self._calibrated(raw) if self.contrastive else raw

    def _has_source(self, m: int) -> torch.Tensor:
        """bool (n_items,): the items observing a modality other than m (something to translate m from)."""
        others = [a for a in range(self.n_modalities) if a != m]
        return self.observed[:, others].any(1) if others else torch.zeros_like(self.observed[:, m])

    def _calibrated(self, raw: list[torch.Tensor]) -> list[torch.Tensor]:
        """``raw`` generated features (from ``_generate``) calibrated to the real features' distribution."""
        out = []
        for m, x in enumerate(raw):
            y = self.calibrate(m, x)
            free = ~self._has_source(m)
            if self.config.gen_calibration and int(free.sum()) >= 2:
                # Rows with nothing to translate from come out of another route (users' preference only):
                # they get their own spread, mapped to the real one like the others.
                _, _, real_mean, real_std = getattr(self, f"calib_{m}")
                z = x[free]
                y[free] = (z - z.mean(0)) / z.std(0).clamp_min(1e-6) * real_std + real_mean
            out.append(y)
        return out

    @torch.no_grad()
    def _generate(self, noise: bool = True) -> list[torch.Tensor]:
        """``generated_features`` before calibration."""
        M = self.n_modalities
        g = [self.generation_general(m, self.features(m)) for m in range(M)]
        f = self.item_filters()
        obs = self.observed.float()
        source_means = self._observed_means() if self.contrastive else []
        out = []
        for m in range(M):
            srcs = [a for a in range(M) if a != m]
            if srcs:
                weights = torch.stack([obs[:, a] for a in srcs], 1)
                weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, torch.ones_like(weights))
                trans = torch.stack([self.translate(a, m, g[a]) for a in srcs], 1)
                g_hat = (trans * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
            else:  # a single modality: no other to translate from, the (imputed) row's own general part
                g_hat = g[m]
            s_hat = self.gen_specific[m](f[m])
            if self.contrastive and srcs:
                # Content to translate from: the catalog's preference, as for queries (and as the chain learned).
                # Nothing to translate from: a content-free general part and the item's own users' preference.
                has_source = self._has_source(m)[:, None]
                s_hat = torch.where(has_source, self.gen_specific[m](_catalog_mean(f[m])), s_hat)
                free = self._content_free_general(m, source_means)
                if free is not None:
                    g_hat = torch.where(has_source, g_hat, free.expand_as(g_hat))
            if not self.raw_generation:
                g_hat, s_hat = self.propagate(m, g_hat), self.propagate(m, s_hat)
            out.append(self.decode(m, g_hat, s_hat, noise=noise and not self.contrastive))
        return out

    def refit_generation(self, steps: int, batch_size: int = 256, lr: float = 1e-3, seed: int = 0) -> float:
        """Fit the generation chain to convergence after training, leaving recommendation untouched.

        The general encoder learns for recommendation too and loses item identity as training goes on, so
        generation gets its own copy of it (started from the trained one) and fits that copy, the
        translators, specific generators and decoders on the items observing both modalities of each
        pair, with the users' preferences fixed. Returns the last loss; recalibrates.
        """
        if not self.contrastive or self.n_modalities < 2 or steps <= 0:
            return float("nan")
        with torch.no_grad():
            for copy, trained in zip(self.gen_enc_general, self.enc_general):
                copy.load_state_dict(trained.state_dict())
            self.gen_shared.load_state_dict(self.shared.state_dict())
            self.gen_refitted.fill_(True)
            f = [x.detach() for x in self.item_filters()]
            means = [_catalog_mean(x) for x in f]
            source_means = self._observed_means()
        observing = [(b, torch.nonzero(self.observed[:, b]).squeeze(1)) for b in range(self.n_modalities)]
        observing = [(b, rows) for b, rows in observing if len(rows) >= 2]
        gen = torch.Generator().manual_seed(seed)
        params = [*self.gen_enc_general.parameters(), *self.gen_shared.parameters(), *self.translator.parameters(),
                  *self.gen_specific.parameters(), *self.decoder.parameters()]
        opt = torch.optim.Adam(params, lr=lr)
        pairs = [(a, b, torch.nonzero(self.observed[:, a] & self.observed[:, b]).squeeze(1))
                 for a in range(self.n_modalities) for b in range(self.n_modalities) if a != b]
        pairs = [(a, b, rows) for a, b, rows in pairs if len(rows) >= 2]
        loss = torch.zeros(())
        for _ in range(steps if pairs else 0):
            loss = torch.zeros(())
            for a, b, rows in pairs:
                pick = rows[torch.randperm(len(rows), generator=gen)[:batch_size]]
                g_a = self.generation_general(a, self.features(a)[pick])
                loss = loss + self._chain_loss(a, b, g_a, means[b], self.features(b)[pick])
            for b, rows in observing:
                pick = rows[torch.randperm(len(rows), generator=gen)[:batch_size]]
                loss = loss + self._preference_chain_loss(b, source_means, f[b][pick], self.features(b)[pick])
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.update_calibration()
        return float(loss.detach())

    def _observed_means(self) -> list[torch.Tensor | None]:
        """Per modality, the mean of the observed feature rows (None where no item observes it)."""
        return [self.features(m)[self.observed[:, m]].mean(0) if self.observed[:, m].any() else None
                for m in range(self.n_modalities)]

    def calibrate(self, m: int, x: torch.Tensor) -> torch.Tensor:
        """Generated features of modality m moved to the real features' per-dimension mean and spread."""
        if not (self.contrastive and self.config.gen_calibration):
            return x
        gen_mean, gen_std, real_mean, real_std = getattr(self, f"calib_{m}")
        return (x - gen_mean) / gen_std * real_std + real_mean

    @torch.no_grad()
    def update_calibration(self, raw: list[torch.Tensor] | None = None) -> None:
        """Fit the calibration of the contrastive generator: per modality, the mean and spread of what it
        generates (``raw``, from ``_generate``; computed when None) for items with a source modality
        observed, and those of the real (observed) rows."""
        if not self.contrastive:
            return
        generated = self._generate(noise=False) if raw is None else raw
        for m, x_hat in enumerate(generated):
            src = self._has_source(m)
            real = self.features(m)[self.observed[:, m]]
            if int(src.sum()) < 2 or real.shape[0] < 2:
                continue
            gen = x_hat[src]
            stats = torch.stack([gen.mean(0), gen.std(0).clamp_min(1e-6), real.mean(0), real.std(0)])
            getattr(self, f"calib_{m}").copy_(stats)

    @torch.no_grad()
    def generate_missing(self) -> None:
        """Write generated features into the rows of items missing each modality (one generation pass:
        the contrastive generator's calibration is fitted on it first)."""
        generated = self._generate()
        if self.contrastive:
            self.update_calibration(generated)
            generated = self._calibrated(generated)
        for m, x_hat in enumerate(generated):
            miss = ~self.observed[:, m]
            self.features(m)[miss] = x_hat[miss]
        self.epochs_generated += 1

    @torch.no_grad()
    def refresh_graphs(self, knn_fn: KnnFn = chunked_cosine_knn) -> None:
        """Blend the kNN rows of generated items towards a graph rebuilt on the current features."""
        for m in range(self.n_modalities):
            idx, sims = knn_fn(self.features(m), self.config.knn_k)
            rebuilt = normalised_knn(idx, sims)
            rows = torch.nonzero(~self.observed[:, m]).squeeze(1)
            old = self.graphs[f"mm_{m}"].to_sparse_coo().coalesce()
            self.graphs[f"mm_{m}"] = refresh_rows(old, rebuilt, rows, self.config.avg_lambda).to_sparse_csr()

    # ------------------------------------------------------------ query path
    @torch.no_grad()
    def query_to_modality(self, src: int, dst: int, x: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """Translate raw features ``x`` (B, d_src) of modality ``src`` into raw features of ``dst``.

        General part through the translator; specific part from gen_dst applied to the user's preference
        (personalised) or to the catalog-wide mean preference; decoder_dst on both (DESIGN.md section 3).
        """
        g = self.translate(src, dst, self.generation_general(src, x))
        if users is None:
            pref = self.mean_filter(dst).expand(x.shape[0], -1)
        else:
            pref = self.user_filter(dst, users)
        return self.calibrate(dst, self.decode(dst, g, self.gen_specific[dst](pref)))

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
        content = (torch.stack(g).mean(0) + torch.stack(s).sum(0)) / (M + 1)
        if self.config.untrained_items == "paper":
            return content
        return content + self._neighbour_ids_of(feats)

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
