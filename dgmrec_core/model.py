"""The DGMRec model (docs/DESIGN.md section 2): LightGCN extended with disentangled modality branches.

Each modality's features split into a general part (shared encoder head) and a specific part, filtered by
the users' modality preference and propagated on the modality's item kNN graph. With ``config.generation``
off it keeps the mean-imputed features (the no-generation baseline); the plain LightGCN baseline is
:class:`~dgmrec_core.lightgcn.LightGCN` itself. Generation lives in :mod:`dgmrec_core.generator`, the
batch-local training mode in :mod:`dgmrec_core.batch_local`.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from . import batch_local, epoch_work
from .config import DGMRecConfig
from .data import Dataset
from .features import impute, shareable
from .feature_rows import FeatureRows, bf16_pays, bf16_rows, product_in_rows_precision
from .generator import GenerationMixin, catalog_mean
from .cold_items import UntrainedItemsMixin
from .graphs import KnnFn, chunked_cosine_knn, modality_knn_graph
from .lightgcn import LightGCN, Parts
from .losses import CLUB, DecoderTargets, RowGroups, RowTargets, bpr_loss, decoded_mse, info_nce, l2_norms, perturb


def _mlp(d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d))


def _xavier(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)


class DGMRec(GenerationMixin, UntrainedItemsMixin, LightGCN):
    """DGMRec over ``len(names)`` modalities with feature dims ``dims``."""

    def __init__(self, config: DGMRecConfig, n_users: int, n_items: int, dims: list[int], names: list[str]) -> None:
        super().__init__(config, n_users, n_items, dims, names)
        d = config.embedding_size
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
        if config.fusion == "gated":  # the modality parts' share of the fused embeddings, learned from 0
            self.fusion_gate = nn.Parameter(torch.zeros(()))
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
        self._mean_filters: list[torch.Tensor] | None = None
        self._calibration_pass: tuple | None = None  # generator.update_calibration's last pass, while still valid
        self._cache: batch_local.PropagationCache | None = None
        self._rows = FeatureRows()  # the rows' squared norms, made once per version of the rows

    # ----------------------------------------------------------------- set-up
    def pair_key(self, src: int, dst: int) -> str:
        return f"{self.names[src]}2{self.names[dst]}"

    @property
    def n_modalities(self) -> int:
        return len(self.dims)

    def features(self, m: int) -> torch.Tensor:
        return getattr(self, f"feat_{m}")

    def training_rows(self, m: int, items: torch.Tensor | None = None) -> torch.Tensor:
        """The feature rows ``items`` (all when None) as training reads them: cast to bfloat16 while training
        where ``config.feature_precision`` says so (``feature_rows.bf16_pays``), else the rows themselves."""
        c = self.config
        if self.training and not c.train_features and bf16_pays(c.feature_precision, self.features(m).device):
            return bf16_rows(self.features(m), items)
        return self.features(m) if items is None else self.features(m)[items]

    @property
    def contrastive(self) -> bool:
        """The contrastive generator is the one in effect (training terms, generation, calibration) rather than
        the paper's: always with ``generator`` 'contrastive' and ``gen_training`` 'joint'; with 'after', once
        the refit fitted it (until then training and generation are the paper's)."""
        c = self.config
        return c.generator == "contrastive" and (c.gen_training == "joint" or bool(self.gen_refitted))

    @property
    def raw_generation(self) -> bool:
        """Translators and decoders learn on, and generate from, the encoders' own parts (not propagated)."""
        return self.contrastive or self.config.generation_space == "raw"

    @property
    def batch_local(self) -> bool:
        """Training batches compute only their own rows (docs/DESIGN.md, "Batch-local training"): with
        ``training_mode`` 'batch-local', or 'auto' when a batch (at most 2 x batch_size distinct items) cannot
        touch the whole catalog."""
        mode = self.config.training_mode
        return mode == "batch-local" or (mode == "auto" and self.n_items > 2 * self.config.batch_size)

    def main_parameters(self) -> list[nn.Parameter]:
        """Parameters of the main optimiser: everything but the CLUB estimators."""
        club = {id(p) for p in self.club.parameters()}
        return [p for p in self.parameters() if id(p) not in club]

    def estimator_parameters(self) -> list[nn.Parameter]:
        """The CLUB estimators' parameters (their own optimiser)."""
        return list(self.club.parameters())

    def attach(self, dataset: Dataset, knn_fn: KnnFn = chunked_cosine_knn, *, take_features: bool = False) -> None:
        """Load the features (imputed) and build every graph from ``dataset``'s training split; ``take_features``:
        the feature buffers are the data's own arrays where they can be (docs/DESIGN.md, "Batch-local training")."""
        super().attach(dataset, knn_fn)
        self._cache, self._calibration_pass = None, None
        with torch.no_grad():
            self.observed.copy_(torch.as_tensor(dataset.observed))
            for m, mod in enumerate(dataset.modalities):
                target = self.features(m).detach()
                if take_features and not self.config.train_features and shareable(mod.values, target):
                    self.register_buffer(f"feat_{m}", target := torch.from_numpy(mod.values))
                if target.device.type == "cpu":  # imputed straight into the model's rows: no full-size copy
                    impute(mod.values, mod.observed, self.config.imputation, out=target.numpy())
                else:
                    target.copy_(torch.as_tensor(impute(mod.values, mod.observed, self.config.imputation)))
                self.graphs[f"mm_{m}"] = modality_knn_graph(self.features(m), self.observed[:, m], self.config.knn_k,
                                                             knn_fn, observed_only=self.config.knn_observed_only
                                                             ).to_sparse_csr()

    def load_graph_state(self, state: dict) -> None:
        self._mean_filters, self._cache, self._calibration_pass = None, None, None
        super().load_graph_state(state)

    # --------------------------------------------------------- representations
    def general(self, m: int, x: torch.Tensor) -> torch.Tensor:
        """General part g_m = sigmoid(W_shared tanh(W_m x))."""
        return self._general_head(self.enc_general[m](x))

    def _general_head(self, h: torch.Tensor) -> torch.Tensor:
        """sigmoid(W_shared tanh(h)): the general part from the general encoder's output h = W_m x."""
        return torch.sigmoid(self.shared(torch.tanh(h)))

    def encoded(self, m: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(general part, specific part) of the feature rows ``x`` of modality m, from one product of ``x`` with
        both encoders' weights: the wide rows are read once, forward and backward."""
        d = self.config.embedding_size
        enc_g, enc_s = self.enc_general[m], self.enc_specific[m]
        w = torch.cat([enc_g.weight.T, enc_s.weight.T], dim=1)
        out = product_in_rows_precision(x, w)  # rows in bfloat16 (config.feature_precision): the product in theirs
        return self._general_head(out[:, :d] + enc_g.bias), torch.sigmoid(out[:, d:] + enc_s.bias)

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
            filters = [catalog_mean(f) for f in self.item_filters()]
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

    def forward_parts(self) -> Parts:
        """Everything the loss and the scores need, for all users and items."""
        e_u, e_i = self.cf_embeddings()
        if self.config.untrained_items == "content-neighbours":
            e_i = self.content_neighbour_ids(e_i)
        M = range(self.n_modalities)
        x = [self.training_rows(m) for m in M]
        g, s = (list(parts) for parts in zip(*(self.encoded(m, x[m]) for m in M)))
        f = self.item_filters()
        gf = [self.propagate(m, f[m] * g[m]) for m in M]
        sf = [self.propagate(m, f[m] * s[m]) for m in M]
        return Parts(e_u, e_i, g, s, f, gf, sf, [self.to_users(h) for h in gf], [self.to_users(h) for h in sf], x)

    def with_modalities(self, e: torch.Tensor, general: list[torch.Tensor], specific: list[torch.Tensor]
                        ) -> torch.Tensor:
        """e + (mean_m general_m + sum_m specific_m) / (M + 1) (the paper), the sum times the learned
        ``fusion_gate`` with ``config.fusion`` 'gated'."""
        content = (torch.stack(general).mean(0) + torch.stack(specific).sum(0)) / (self.n_modalities + 1)
        return e + (self.fusion_gate * content if self.config.fusion == "gated" else content)

    def fuse(self, parts: Parts) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused users and items: ``with_modalities`` of the collaborative embeddings and the propagated parts."""
        return self.with_modalities(parts.e_u, parts.gu, parts.su), self.with_modalities(parts.e_i, parts.gf, parts.sf)

    # -------------------------------------------------------------------- loss
    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Total training loss of a BPR batch and its named terms.

        Paper-exact mode: every representation of every user and item, as the paper's code. Batch-local
        mode: only the batch's rows (``batch_local.local_parts``); the indices become positions among them.
        """
        c = self.config
        ids, pref = None, None
        if self.batch_local and self.training:
            if self._cache is None:
                self._cache = batch_local.fill_cache(self)
            batch = batch_local.LocalBatch.of(users, pos, neg)
            parts, fresh = batch_local.local_parts(self, self._cache, batch)
            users, pos, neg, ids, pref = batch.user_rows, batch.pos_rows, batch.neg_rows, batch.items, self._cache.pref
        else:
            parts = self.forward_parts()
        fu, fi = self.fuse(parts)
        terms: dict[str, torch.Tensor] = {"bpr": bpr_loss(fu[users], fi[pos], fi[neg])}
        reg = c.reg_id * l2_norms(parts.e_u[users], parts.e_i[pos], parts.e_i[neg])
        terms.update(self._modality_terms(parts, users, pos, neg, ids, pref))
        reg = reg + c.reg * l2_norms(*[parts.gf[m][pos] + parts.sf[m][pos] for m in range(self.n_modalities)])
        terms["reg"] = reg
        if ids is not None:
            self._cache.write(batch, fresh)
        total = sum(terms.values())
        return total, {k: float(v.detach()) for k, v in terms.items()}

    def _modality_terms(self, p: Parts, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                        ids: torch.Tensor | None, pref: list[torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """The modality losses of a batch. ``p``'s item rows are the items ``ids`` (all items when None);
        ``pref`` is the catalog's mean preference per modality (computed from ``p.f`` when None)."""
        c = self.config
        batch_items = torch.unique(torch.cat([pos, neg]))
        item = (lambda rows: rows) if ids is None else (lambda rows: ids[rows])
        if pref is None:
            pref = [catalog_mean(f) for f in p.f] if self.contrastive else [None] * self.n_modalities
        U, P = RowGroups.of(users), RowGroups.of(pos)
        targets = [self._decoder_targets(m, p.x[m], item) for m in range(self.n_modalities)]
        inter, gen, chain = self._generation_terms(p, batch_items, item, pref, U, targets)
        club = sum(self.club[m](p.sf[m], p.gf[m]) for m in range(self.n_modalities))
        intra, bm = self._alignment_terms(p, U, P)
        tg, ds = (p.g, p.s) if self.raw_generation else (p.gf, p.sf)
        recon = sum(self._recon(m, tg[m], ds[m], targets[m]) for m in range(self.n_modalities))
        terms = {"inter": c.inter_modal * inter, "club": c.sampler * club, "gen": c.additive * gen,
                 "recon": c.recon * recon, "intra": c.intra_modal * intra, "bm": c.align_bm * bm}
        if self.contrastive:
            terms["chain"] = c.gen_weight * chain
        return terms

    def _generation_terms(self, p: Parts, batch_items: torch.Tensor, item, pref: list, U: RowGroups,
                          targets: list[RowTargets]) -> tuple:
        """(inter-modal InfoNCE, generation MSE, contrastive chain) over the batch's items and users."""
        c, M = self.config, self.n_modalities
        nce = partial(info_nce, bf16=c.bf16_logits, anchors=c.nce_anchors)
        obs = self.observed[item(batch_items)]
        tg = p.g if self.raw_generation else p.gf  # translator targets
        frozen = self.contrastive and c.gen_chain_scope == "generator"  # the chain trains the generator's parts only
        src, pref = ([g.detach() for g in p.g], [x.detach() for x in pref]) if frozen else (p.g, pref)
        inter = gen = chain = self.user_emb.weight.new_zeros(())
        for a in range(M):
            for b in range(M):
                if a == b:
                    continue
                both = batch_items[obs[:, a] & obs[:, b]]
                if len(both):
                    gen = gen + F.mse_loss(self.translate(a, b, perturb(tg[a][both])), tg[b][both])
                    if self.contrastive:
                        chain = chain + self._chain_loss(a, b, src[a][both], pref[b], targets[b].at(both))
                if a < b:
                    inter = inter + nce(p.g[a][both], p.g[b][both], c.inter_modal_temp)
                    inter = inter + nce(p.gu[a], p.gu[b], c.inter_modal_temp, U, U)
        means = [p.x[a][batch_items[obs[:, a]]].float().mean(0) if obs[:, a].any() else None for a in range(M)]
        # (the preference chain reads f detached: it teaches generation to use the users' preference, and must
        # not bend the user embeddings toward content, which costs recommendation)
        for m in range(M):
            has = batch_items[obs[:, m]]
            if len(has):
                gen = gen + F.mse_loss(self.gen_specific[m](perturb(p.f[m][has])), p.s[m][has])
                if self.contrastive and M > 1:
                    chain = chain + self._preference_chain_loss(m, means, p.f[m][has].detach(), targets[m].at(has),
                                                                frozen)
        return inter, gen, chain

    def _alignment_terms(self, p: Parts, U: RowGroups, P: RowGroups) -> tuple[torch.Tensor, torch.Tensor]:
        """(user-item InfoNCE in the CF, general and specific spaces; behaviour-modality InfoNCE)."""
        c = self.config
        nce = partial(info_nce, bf16=c.bf16_logits, anchors=c.nce_anchors)
        g_u, g_i = torch.stack(p.gu).sum(0), torch.stack(p.gf).sum(0)
        intra = nce(p.e_u, p.e_i, c.intra_modal_temp, U, P)
        intra = intra + nce(g_u, g_i, c.inter_modal_temp, U, P)
        for m in range(self.n_modalities):
            intra = intra + nce(p.su[m], p.sf[m], c.intra_modal_temp, U, P)
        bm = nce(p.e_i, g_i, c.align_bm_temp, P, P) + nce(p.e_u, g_u, c.align_bm_temp, U, U)
        return intra, bm

    def _decoder_targets(self, m: int, x: torch.Tensor, item) -> RowTargets:
        """The decoder targets of the parts' rows that reconstruction reads (``item`` maps a row to its item):
        only rows observing m with the contrastive generator or raw generation space (so the decoder never
        learns from its own generated rows), every row with the paper's. The generation chain's rows observe
        m too, so it reads the same targets: each wide row is multiplied once."""
        all_rows = torch.arange(x.shape[0], device=x.device)
        rows = all_rows[self.observed[item(all_rows), m]] if self.raw_generation else all_rows
        position = torch.full_like(all_rows, -1)
        position[rows] = torch.arange(len(rows), device=x.device)
        sq = None if self.config.train_features else self._rows.squared_norms(m, self.features(m), item(rows))
        return RowTargets(rows, position, DecoderTargets.of(self.decoder[m], x[rows], sq))

    def _recon(self, m: int, g: torch.Tensor, s: torch.Tensor, targets: RowTargets) -> torch.Tensor:
        """MSE of decoder_m(perturbed, detached [g, s]) against the features of ``targets``' rows (``decoded_mse``:
        no decoded row)."""
        z = perturb(torch.cat([g[targets.rows].detach(), s[targets.rows].detach()], dim=1))
        return decoded_mse(self.decoder[m], z, targets.targets)

    # --------------------------------------------------- per-epoch procedures
    def begin_epoch(self, estimator_optimizer: torch.optim.Optimizer | None, epoch: int,
                    knn_fn: KnnFn = chunked_cosine_knn) -> None:
        """The whole-catalog work before epoch ``epoch``'s batches (0-based): CLUB fitting, generation of the
        missing features and, every ``refresh_every`` epochs, the kNN-row refresh. In batch-local mode the
        propagation cache the batches read is filled after generation and CLUB fits on its rows (no other
        whole-catalog forward pass)."""
        c = self.config
        if not self.batch_local:
            epoch_work.club_step(self, estimator_optimizer, c.club_steps)
        if c.generation:
            self.generate_missing()
            if (epoch + 1) % c.refresh_every == 0:
                epoch_work.refresh_graphs(self, knn_fn)
        self._cache = batch_local.fill_cache(self) if self.batch_local else None
        if self._cache is not None:
            epoch_work.club_step(self, estimator_optimizer, c.club_steps, self._cache.propagated())

    def end_epoch(self) -> None:
        """Fit the generator's calibration, so a saved state generates as its weights say."""
        self._cache = None
        self.update_calibration(keep_pass=True)

    def finish_training(self, seed: int) -> None:
        """The generation refit on the restored best state (scores unchanged); the last kept generation pass and
        the rows' squared norms let go."""
        self._calibration_pass = None
        self._rows.clear()
        if self.config.generation and self.config.gen_refit_steps:
            self.refit_generation(self.config.gen_refit_steps, seed=seed)
