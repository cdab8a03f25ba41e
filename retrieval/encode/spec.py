"""Which encoder: the open_clip model, its weights and the seed of random weights (DESIGN.md, "Parts").

Light on purpose (no torch or open_clip): the command line takes its flags from these fields, and a
bundle records the spec it was built with (``retrieval.index.info``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgmrec_core.options import option

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"


@dataclass(frozen=True)
class EncoderSpec:
    """How to build (or rebuild) an encoder: open_clip model name, weights (a pretrained tag, a checkpoint
    path, or None for seeded random weights) and the seed of random weights."""

    model_name: str = option(DEFAULT_MODEL, "open_clip architecture")
    pretrained: str | None = option(DEFAULT_PRETRAINED, "open_clip pretrained tag, a local weights file, or "
                                                        "'none' for seeded random weights")
    seed: int = option(0, "seed of random encoder weights (--pretrained none)")

    @classmethod
    def of(cls, encoder: Any) -> "EncoderSpec":
        """The spec of a loaded encoder (a checkpoint file is recorded by its absolute path)."""
        weights = encoder.pretrained
        if weights is not None and os.path.isfile(weights):
            weights = str(Path(weights).resolve())
        return cls(encoder.model_name, weights, encoder.seed)

    def describe(self) -> str:
        """'MODEL (weights)' for messages."""
        return f"{self.model_name} ({self.pretrained or 'random weights'})"

    def to_json(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "pretrained": self.pretrained, "seed": self.seed}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> "EncoderSpec":
        return cls(value["model_name"], value.get("pretrained"), int(value.get("seed", 0)))
