"""What training batches read of the raw feature rows, made once per version of the rows.

A batch multiplies its items' raw feature rows (up to 4,096 wide) with the encoders' and the decoders'
weights, forward and backward, and the reconstruction loss needs each row's squared norm. Neither the rows
nor their norms change between batches: only generation (once per epoch) and loading write into them. So:

- the squared norms of every row are computed once per version of the rows, not on every batch (the same
  values; ``config.train_features``, where the rows train, keeps computing them on the batch);
- with ``config.feature_precision`` 'bfloat16' (or 'auto' on a CPU with bfloat16 units: ``bf16_pays``), the
  rows are read from a bfloat16 copy made once per version, so the wide products run in bfloat16
  (docs/DESIGN.md, "Other named deviations"): on a CPU with AVX512-BF16 or AMX they are several times
  faster than float32, and the batch gathers half the bytes.

A version is the tensor's storage and in-place version counter: a write into the rows (generation's
``feat[rows] = ...``, ``copy_``, a load) moves the counter; a tensor put in its place has other storage.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

_NORM_CHUNK = 65_536  # rows per squared-norm chunk: no full-size float32 temporary for a large catalog


def bf16_pays(precision: str, device: torch.device) -> bool:
    """Whether training reads the rows in bfloat16: always with 'bfloat16', never with 'float32'; with 'auto'
    on a CPU with bfloat16 matrix units (AVX512-BF16 or AMX tiles: torch's own CPU checks), where a product
    runs 2.6-4x faster than in float32. Elsewhere 'auto' keeps float32: a CPU without those units emulates
    bfloat16, and on a GPU it was not measured."""
    if precision != "auto":
        return precision == "bfloat16"
    cpu = torch.cpu
    checks = (getattr(cpu, "_is_avx512_bf16_supported", None), getattr(cpu, "_is_amx_tile_supported", None))
    return device.type == "cpu" and any(bool(check()) for check in checks if check is not None)


def _version(x: torch.Tensor) -> tuple:
    return x.data_ptr(), x._version, tuple(x.shape), x.device


@dataclass
class _Copy:
    version: tuple
    squared_norms: torch.Tensor
    low_precision: torch.Tensor | None


class FeatureRows:
    """Per modality, the squared norms (float32) of every feature row and, on request, a bfloat16 copy."""

    def __init__(self) -> None:
        self._copies: dict[int, _Copy] = {}

    def clear(self) -> None:
        self._copies.clear()

    def _copy(self, m: int, x: torch.Tensor, low_precision: bool) -> _Copy:
        copy = self._copies.get(m)
        if copy is None or copy.version != _version(x) or (low_precision and copy.low_precision is None):
            with torch.no_grad():
                rows = x.detach()
                norms = torch.cat([(chunk * chunk).sum(1) for chunk in rows.split(_NORM_CHUNK)]) if len(rows) \
                    else rows.new_zeros(0)
                copy = _Copy(_version(x), norms, rows.to(torch.bfloat16) if low_precision else None)
            self._copies[m] = copy
        return copy

    def squared_norms(self, m: int, x: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """|x_i|^2 of the rows ``items`` of modality m's rows ``x``."""
        return self._copy(m, x, False).squared_norms[items]

    def bf16(self, m: int, x: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """The rows ``items`` (all when None) of modality m's rows ``x`` in bfloat16."""
        values = self._copy(m, x, True).low_precision
        return values if items is None else values.index_select(0, items)
