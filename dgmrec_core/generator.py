"""DGMRec's generation of missing modality features (docs/DESIGN.md, "Generation"): the chain
translator(general part of a source modality) + specific generator(users' preference) -> decoder, the
refit after training, the calibration to the real features, and the query path that runs the same chain
on a query's features. A mixin of ``DGMRec``: it reads the model's encoders, filters and features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from .losses import DecoderTargets, decoded_match

GENERATION_CHUNK = 65_536  # items generated at a time: generation's memory beyond the features is O(chunk x d)


def catalog_mean(f: torch.Tensor) -> torch.Tensor:
    """Mean of item preference filters ``f`` (n, d) over the items with interactions (non-zero rows)."""
    has = f.abs().sum(1) > 0
    return f[has].mean(0) if has.any() else f.mean(0)


@dataclass(frozen=True)
class GenerationInputs:
    """What generation reads of the whole catalog, computed once per pass: per modality the items' preference
    filters, the catalog's mean preference and the mean observed features (the contrastive generator's), and
    which items have a source modality to translate from."""

    filters: list[torch.Tensor]
    prefs: list[torch.Tensor]
    source_means: list[torch.Tensor | None]
    has_source: list[torch.Tensor]  # per modality m: bool (n_items,), the items observing another modality


class Moments:
    """Per-dimension mean and unbiased standard deviation of rows seen chunk by chunk (Chan et al.'s pairwise
    update, in float64). Rows seen in one chunk give torch's own ``mean(0)`` and ``std(0)``."""

    def __init__(self) -> None:
        self.count, self._chunks = 0, 0
        self._mean = self._m2 = self._single = None

    def add(self, x: torch.Tensor) -> None:
        if x.shape[0] == 0:
            return
        n, mean = x.shape[0], x.double().mean(0)
        m2 = ((x.double() - mean) ** 2).sum(0)
        if self._chunks == 0:
            self._single = (x.mean(0), x.std(0))
            self.count, self._mean, self._m2 = n, mean, m2
        else:
            total = self.count + n
            delta = mean - self._mean
            self._mean = self._mean + delta * (n / total)
            self._m2 = self._m2 + m2 + delta ** 2 * (self.count * n / total)
            self.count = total
        self._chunks += 1

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._chunks == 1:
            return self._single
        return self._mean.float(), (self._m2 / max(self.count - 1, 1)).sqrt().float()


def _joined(chunks: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Per modality, the rows of every chunk in order (a lone chunk as it is)."""
    return chunks[0] if len(chunks) == 1 else [torch.cat(parts) for parts in zip(*chunks)]


class GenerationMixin:
    """Generation methods of ``DGMRec`` (see the module docstring)."""

    def _chain_loss(self, a: int, b: int, g_a: torch.Tensor, pref_b: torch.Tensor,
                    x_b: torch.Tensor | DecoderTargets) -> torch.Tensor:
        """The whole generation chain a -> b against the real features of the same items: InfoNCE (each
        generated row must pick its own item among the batch's real rows) plus MSE (scale and offset).

        The specific part comes from the catalog's mean preference ``pref_b`` (d,), as for queries: an item's
        own preference filter would let the decoder recognise training items by their users instead of
        learning from the content (on the sample shop: held-out Hit@10 0.61-0.74 with it, 0.91 without)."""
        s_b = self.gen_specific[b](pref_b).expand(g_a.shape[0], -1)
        return self._decoded_match(b, torch.cat([self.translate(a, b, g_a), s_b], dim=1), x_b)

    def _decoded_match(self, b: int, z: torch.Tensor, x_b: torch.Tensor | DecoderTargets) -> torch.Tensor:
        """InfoNCE + MSE of decoder_b(z) against the real features ``x_b`` of the same items, both computed on
        the decoder's small inputs (``decoded_match``: no decoded row, no n x n product of wide features)."""
        return decoded_match(self.decoder[b], z, x_b, self.config.gen_temp)

    def _content_free_general(self, b: int, source_means: list[torch.Tensor | None],
                              frozen_encoder: bool = False) -> torch.Tensor | None:
        """The general part of modality b translated from the other modalities' mean observed features: what
        an item with no modality of its own gets (its identity then comes from its users' preference).
        ``frozen_encoder``: no gradient reaches the general encoder (only the translators learn)."""
        def general(a: int, x: torch.Tensor) -> torch.Tensor:
            g = self.generation_general(a, x[None])
            return g.detach() if frozen_encoder else g
        parts = [self.translate(a, b, general(a, x)) for a, x in enumerate(source_means)
                 if a != b and x is not None]
        return torch.stack(parts).mean(0) if parts else None

    def _preference_chain_loss(self, b: int, source_means: list[torch.Tensor | None], f_b: torch.Tensor,
                               x_b: torch.Tensor | DecoderTargets, frozen_encoder: bool = False) -> torch.Tensor:
        """Generation of an item with no modality: decoder_b([content-free general part, gen_b(f_b)]) against
        its real features (InfoNCE + MSE), so the users' preference carries what it can of the item."""
        g = self._content_free_general(b, source_means, frozen_encoder)
        if g is None:
            return f_b.new_zeros(())
        return self._decoded_match(b, torch.cat([g.expand(f_b.shape[0], -1), self.gen_specific[b](f_b)], dim=1), x_b)

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
        if not self.contrastive:
            return self._generate(noise)
        return _joined([rows for _, rows in self._calibrated_chunks(self._generation_inputs())])

    def _has_source(self, m: int) -> torch.Tensor:
        """bool (n_items,): the items observing a modality other than m (something to translate m from)."""
        others = [a for a in range(self.n_modalities) if a != m]
        return self.observed[:, others].any(1) if others else torch.zeros_like(self.observed[:, m])

    def _generation_chunks(self) -> list[slice]:
        """The item rows generation works through at a time: ``GENERATION_CHUNK`` rows when generation is row
        by row (the contrastive generator, raw space), else all rows at once (the paper's propagated space
        mixes rows through the kNN graph). Memory beyond the features stays O(chunk x d)."""
        size = GENERATION_CHUNK if self.raw_generation else self.n_items
        return [slice(start, min(start + size, self.n_items)) for start in range(0, self.n_items, size)]

    @torch.no_grad()
    def _generation_inputs(self) -> GenerationInputs:
        f = self.item_filters()
        prefs = [catalog_mean(x) for x in f] if self.contrastive else []
        return GenerationInputs(f, prefs, self._observed_means() if self.contrastive else [],
                                [self._has_source(m) for m in range(self.n_modalities)])

    @torch.no_grad()
    def _generate_rows(self, inputs: GenerationInputs, rows: slice, noise: bool = True) -> list[torch.Tensor]:
        """``generated_features`` of the items ``rows`` before calibration."""
        M = self.n_modalities
        g = [self.generation_general(m, self.features(m)[rows]) for m in range(M)]
        obs = self.observed[rows].float()
        out = []
        for m in range(M):
            srcs = [a for a in range(M) if a != m]
            f = inputs.filters[m][rows]
            if srcs:
                weights = torch.stack([obs[:, a] for a in srcs], 1)
                weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, torch.ones_like(weights))
                trans = torch.stack([self.translate(a, m, g[a]) for a in srcs], 1)
                g_hat = (trans * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
            else:  # a single modality: no other to translate from, the (imputed) row's own general part
                g_hat = g[m]
            s_hat = self.gen_specific[m](f)
            if self.contrastive and srcs:
                # Content to translate from: the catalog's preference, as for queries (and as the chain learned).
                # Nothing to translate from: a content-free general part and the item's own users' preference.
                has_source = inputs.has_source[m][rows, None]
                s_hat = torch.where(has_source, self.gen_specific[m](inputs.prefs[m]), s_hat)
                free = self._content_free_general(m, inputs.source_means)
                if free is not None:
                    g_hat = torch.where(has_source, g_hat, free.expand_as(g_hat))
            if not self.raw_generation:
                g_hat, s_hat = self.propagate(m, g_hat), self.propagate(m, s_hat)
            out.append(self.decode(m, g_hat, s_hat, noise=noise and not self.contrastive))
        return out

    @torch.no_grad()
    def _generate(self, noise: bool = True) -> list[torch.Tensor]:
        """``generated_features`` before calibration, every row."""
        inputs = self._generation_inputs()
        return _joined([self._generate_rows(inputs, rows, noise) for rows in self._generation_chunks()])

    @torch.no_grad()
    def _raw_moments(self, inputs: GenerationInputs) -> tuple[list[torch.Tensor] | None, list[Moments], list[Moments]]:
        """One generation pass, chunk by chunk: per modality the moments of the raw generated rows of items with
        a source modality and of those without one; and the raw rows themselves when they were one chunk."""
        with_source = [Moments() for _ in range(self.n_modalities)]
        without = [Moments() for _ in range(self.n_modalities)]
        chunks = self._generation_chunks()
        raw = None
        for rows in chunks:
            raw = self._generate_rows(inputs, rows, noise=False)
            for m, x in enumerate(raw):
                src = inputs.has_source[m][rows]
                with_source[m].add(x[src])
                without[m].add(x[~src])
        return (raw if len(chunks) == 1 else None), with_source, without

    def _calibrate_rows(self, inputs: GenerationInputs, raw: list[torch.Tensor], rows: slice,
                        without: list[Moments]) -> list[torch.Tensor]:
        """``raw`` generated rows (of the items ``rows``) calibrated to the real features' distribution;
        ``without``: the moments of the raw rows of items with nothing to translate from, over the catalog."""
        out = []
        for m, x in enumerate(raw):
            y = self.calibrate(m, x)
            free = ~inputs.has_source[m][rows]
            if self.config.gen_calibration and without[m].count >= 2:
                # Rows with nothing to translate from come out of another route (users' preference only):
                # they get their own spread, mapped to the real one like the others.
                _, _, real_mean, real_std = getattr(self, f"calib_{m}")
                z_mean, z_std = without[m].mean_std()
                y[free] = (x[free] - z_mean) / z_std.clamp_min(1e-6) * real_std + real_mean
            out.append(y)
        return out

    def _calibrated_chunks(self, inputs: GenerationInputs, moments: tuple | None = None
                           ) -> Iterator[tuple[slice, list[torch.Tensor]]]:
        """(rows, calibrated generated features of those items) chunk by chunk; ``moments``: a
        ``_raw_moments`` pass already made with the same weights."""
        one_chunk, _, without = moments or self._raw_moments(inputs)
        for rows in self._generation_chunks():
            raw = one_chunk if one_chunk is not None else self._generate_rows(inputs, rows, noise=False)
            yield rows, self._calibrate_rows(inputs, raw, rows, without)

    def refit_generation(self, steps: int, batch_size: int = 256, lr: float = 1e-3, seed: int = 0) -> float:
        """Fit the generation chain to convergence after training, leaving recommendation untouched.

        The general encoder learns for recommendation too and loses item identity as training goes on, so
        generation gets its own copy of it (started from the trained one) and fits that copy, the
        translators, specific generators and decoders on the items observing both modalities of each
        pair, with the users' preferences fixed. Returns the last loss; recalibrates. With ``gen_training``
        'after' this is where the contrastive generator first learns (training ran the paper's terms).
        """
        if self.config.generator != "contrastive" or self.n_modalities < 2 or steps <= 0:
            return float("nan")
        with torch.no_grad():
            for copy, trained in zip(self.gen_enc_general, self.enc_general):
                copy.load_state_dict(trained.state_dict())
            self.gen_shared.load_state_dict(self.shared.state_dict())
            self.gen_refitted.fill_(True)
            f = [x.detach() for x in self.item_filters()]
            means = [catalog_mean(x) for x in f]
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
    def update_calibration(self, *, keep_pass: bool = False) -> None:
        """Fit the calibration of the contrastive generator: per modality, the mean and spread of what it
        generates for items with a source modality observed, and those of the real (observed) rows.
        ``keep_pass`` (an epoch's end): the pass is kept for the next ``generate_missing`` while nothing it
        reads changes (``_pass_key``), so the next epoch's generation, after validation, reuses it."""
        if self.contrastive:
            calibrated = self._calibrated_pass()
            if keep_pass:
                self._calibration_pass = (self._pass_key(), *calibrated)

    def _calibrated_pass(self) -> tuple[GenerationInputs, tuple]:
        """One generation pass's inputs and moments (``_raw_moments``), the calibration fitted on them."""
        inputs = self._generation_inputs()
        moments = self._raw_moments(inputs)
        self._fit_calibration(moments[1])
        return inputs, moments

    def _pass_key(self) -> tuple:
        """What a generation pass depends on: every parameter but the CLUB estimators' (which paper-exact training
        steps between an epoch's end and the next one's generation) and every buffer, as its storage and its
        in-place version counter (any optimiser step, load or write into a tensor moves the counter; a tensor
        put in another's place has other storage), and the rows of each chunk."""
        estimators = {id(p) for p in self.estimator_parameters()}
        tensors = [*(p for p in self.parameters() if id(p) not in estimators), *self.buffers()]
        versions = tuple((t.data_ptr(), t._version) for t in tensors)
        return versions, tuple((rows.start, rows.stop) for rows in self._generation_chunks())

    def _unchanged_calibration_pass(self) -> tuple[GenerationInputs, tuple] | None:
        """``update_calibration``'s inputs and moments if nothing changed since it ran (then taken), else None."""
        kept, self._calibration_pass = self._calibration_pass, None
        return kept[1:] if kept is not None and kept[0] == self._pass_key() else None

    def _fit_calibration(self, with_source: list[Moments]) -> None:
        for m, generated in enumerate(with_source):
            real = Moments()
            for rows in self._generation_chunks():
                real.add(self.features(m)[rows][self.observed[rows, m]])
            if generated.count < 2 or real.count < 2:
                continue
            (gen_mean, gen_std), (real_mean, real_std) = generated.mean_std(), real.mean_std()
            getattr(self, f"calib_{m}").copy_(torch.stack([gen_mean, gen_std.clamp_min(1e-6), real_mean, real_std]))

    @torch.no_grad()
    def generate_missing(self) -> None:
        """Write generated features into the rows of items missing each modality, chunk by chunk (the
        contrastive generator's calibration is fitted first, on the same weights)."""
        if self.contrastive:  # the epoch's end's pass when made on these very weights: the same rows and calibration
            inputs, moments = self._unchanged_calibration_pass() or self._calibrated_pass()
            chunks = self._calibrated_chunks(inputs, moments)
        else:
            inputs = self._generation_inputs()
            chunks = ((rows, self._generate_rows(inputs, rows)) for rows in self._generation_chunks())
        for rows, generated in chunks:  # a chunk's generation reads only its own rows' features
            for m, x_hat in enumerate(generated):
                miss = ~self.observed[rows, m]
                self.features(m)[rows][miss] = x_hat[miss]
        self.epochs_generated += 1

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
