"""FAISS search on a GPU, where faiss is built with GPU support and sees one (docs/DESIGN.md, "Data-parallel
training and devices").

The index stays a CPU index: it is what is built, saved and appended to. Searches run on a GPU copy made
at the first search and made again once the index changed (rows added, search parameters set). A kind
FAISS cannot copy (HNSW), or any failure to copy, keeps the searches on the CPU. ``DGMREC_FAISS_GPU=0``
keeps every search on the CPU.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import faiss

log = logging.getLogger("dgmrec.index")
_RESOURCES: list[Any] = []  # one StandardGpuResources per process, made on first use


def gpu_count() -> int:
    """GPUs FAISS can search on here (0 with faiss-cpu, without a GPU, or with DGMREC_FAISS_GPU=0)."""
    if os.environ.get("DGMREC_FAISS_GPU", "").strip().lower() in ("0", "off", "false", "no"):
        return 0
    if not (hasattr(faiss, "StandardGpuResources") and hasattr(faiss, "get_num_gpus")):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except RuntimeError:
        return 0


def _version(index: faiss.Index) -> tuple:
    """What a GPU copy must agree on with ``index``: its rows and its search parameters."""
    return (index.ntotal, getattr(index, "nprobe", None), getattr(index, "max_codes", None))


class GpuMirror:
    """The index to search: a GPU copy of a CPU index where there is a GPU, else the index itself."""

    def __init__(self) -> None:
        self._copy: faiss.Index | None = None
        self._version: tuple | None = None
        self._refused = False

    def searcher(self, index: faiss.Index) -> faiss.Index:
        if self._refused or gpu_count() == 0:
            return index
        version = _version(index)
        if self._copy is None or self._version != version:
            try:
                if not _RESOURCES:
                    _RESOURCES.append(faiss.StandardGpuResources())
                self._copy, self._version = faiss.index_cpu_to_gpu(_RESOURCES[0], 0, index), version
            except (RuntimeError, TypeError, AttributeError) as exc:
                log.info("FAISS: searching %s on the CPU (no GPU copy: %s)", type(index).__name__, exc)
                self._copy, self._refused = None, True
                return index
        return self._copy
