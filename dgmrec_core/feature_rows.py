"""What training batches read of the raw feature rows.

A batch multiplies its items' raw feature rows (up to 4,096 wide) with the encoders' and the decoders'
weights, forward and backward, and the reconstruction loss needs each row's squared norm.

- The squared norms do not change between batches: only generation (once per epoch) and loading write into
  the rows. They are made once per version of the rows, not on every batch (the same values;
  ``config.train_features``, where the rows train, keeps computing them on the batch). A version is the
  tensor's storage and in-place version counter: a write into the rows (generation's ``feat[rows] = ...``,
  ``copy_``, a load) moves the counter; a tensor put in its place has other storage.
- With ``config.feature_precision`` 'bfloat16' (or 'auto' on a CPU with bfloat16 units: ``bf16_pays``) the
  batch's rows are cast to bfloat16 once gathered, so the wide products run in bfloat16 (docs/DESIGN.md,
  "Other named deviations"): on a CPU with AVX512-BF16 or AMX they run several times faster than in
  float32. The cast is per batch, not a bfloat16 copy of the catalog kept beside the float32 rows: a copy
  measured no faster (benchmarks/RESULTS.md section 2e) and costs half the features' memory again (2 GB
  for a million 1,024-wide items).
"""
from __future__ import annotations

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


def precision_name(precision: str, device: torch.device) -> str:
    """'bfloat16' or 'float32': what training on ``device`` reads the rows in (``bf16_pays``), as records name it."""
    return "bfloat16" if bf16_pays(precision, device) else "float32"


def product_in_rows_precision(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w`` made in the precision of the rows ``x`` (bfloat16 rows: a bfloat16 product), returned in ``w``'s."""
    return (x @ w.to(x.dtype)).to(w.dtype)


def _version(x: torch.Tensor) -> tuple:
    return x.data_ptr(), x._version, tuple(x.shape), x.device


class FeatureRows:
    """Per modality, the squared norms (float32) of every feature row, made once per version of the rows."""

    def __init__(self) -> None:
        self._norms: dict[int, tuple[tuple, torch.Tensor]] = {}

    def clear(self) -> None:
        self._norms.clear()

    def squared_norms(self, m: int, x: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """|x_i|^2 of the rows ``items`` of modality m's rows ``x``."""
        version, norms = self._norms.get(m, (None, None))
        if version != _version(x):
            with torch.no_grad():
                rows = x.detach()
                norms = torch.cat([(chunk * chunk).sum(1) for chunk in rows.split(_NORM_CHUNK)]) if len(rows) \
                    else rows.new_zeros(0)
            self._norms[m] = (_version(x), norms)
        return norms[items]


def bf16_rows(x: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
    """The rows ``items`` (all when None) of ``x`` in bfloat16."""
    return (x if items is None else x.index_select(0, items)).to(torch.bfloat16)
