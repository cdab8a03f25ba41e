"""The options of a build, typed, each default owned here with its help text (the CLI reads both).

Light on purpose (no torch, faiss or open_clip): ``dgmrec build --help`` is made from these fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dgmrec_core.config import DGMRecConfig
from retrieval.defaults import AUTO_COMPRESS_BYTES, AUTO_EXACT_MAX, INDEX_KINDS
from retrieval.encode.spec import EncoderSpec
from dgmrec_core.options import option


@dataclass(frozen=True)
class BuildOptions:
    """How ``build_index`` builds: the encoder (when none is given loaded), the model's config, and these."""

    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    config: DGMRecConfig = field(default_factory=DGMRecConfig)
    work_dir: Path | None = option(None, "cache of features and the trained model (default: the index folder "
                                         "+ '.work')")
    skip_bad: bool = option(False, "drop bad catalog rows (and interactions of unknown items) and list them, "
                                   "instead of stopping at the first problems")
    holdout: float = option(0.05, "share of items with both modalities that lose one for training, to measure "
                                  "generation against the real feature")
    seed: int | None = option(None, "seed of the held-out draw (default: the config's seed)")
    kind: str = option("auto", f"FAISS index kind (auto: exact below {AUTO_EXACT_MAX:,} items, IVF above, IVF-PQ re-ranked from disk "
                                            f"once IVF's float32 vectors would pass {AUTO_COMPRESS_BYTES / 1024**3:g} GiB)",
                       choices=INDEX_KINDS)
    progress: bool = option(True, "progress bars while training")
    force: bool = option(False, "write the index even over an existing folder that is not an index (its files "
                                "are replaced)")

    def work_folder(self, out_dir: Path) -> Path:
        """The cache folder: ``work_dir``, or the index folder's name + '.work' beside it."""
        return Path(self.work_dir) if self.work_dir is not None else out_dir.with_name(out_dir.name + ".work")

    def holdout_seed(self) -> int:
        return self.config.seed if self.seed is None else self.seed
