"""What a bundle write is given, checked before anything is written: item ids, vectors, generated flags,
``extra`` and the files to copy in; and meta.json's list of item files on load."""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dgmrec_core.errors import DataError
from retrieval.index.itemfiles import ITEM_FILE
from retrieval.index.segments import FUSED, IDS_FILE, SEGMENT_SUFFIX
from retrieval.index.storage import META, IndexMismatch
from retrieval.index.vectors import check_matrix
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def split_extra(folder: Path, extra: dict[str, Any], encoder_fingerprint: dict | str
                 ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``extra``'s JSON values (checked serialisable, with the encoder fingerprint) and its arrays."""
    arrays = {k: np.asarray(v) for k, v in extra.items() if isinstance(v, np.ndarray)}
    for key in arrays:
        if not _NAME.match(key):
            raise DataError(folder, f"extra array name {key!r} must match {_NAME.pattern}", field="extra")
    plain = {k: v for k, v in extra.items() if k not in arrays}
    try:
        json.dumps({"extra": plain, "encoder_fingerprint": encoder_fingerprint})
    except (TypeError, ValueError) as exc:
        raise DataError(folder, f"extra / encoder_fingerprint must be JSON-serialisable ({exc})") from exc
    return plain, arrays


def files_to_copy(folder: Path, files: dict[str, str | Path]) -> dict[str, Path]:
    """Bundle file name -> existing source file, each name a plain one that no bundle file of its own takes."""
    out = {str(name): Path(src) for name, src in files.items()}
    for name, src in out.items():
        if (Path(name).name != name or name == META or name.endswith((".faiss", ".npy")) or ITEM_FILE.match(name)
                or IDS_FILE.match(name)):
            raise DataError(folder, f"bundle file name {name!r} must be a plain name, not {META}, "
                                    f"*.faiss, *.npy, items-<k>.json or ids-<k>.json", field="files")
        if not src.is_file():
            raise DataError(src, "file to copy into the bundle does not exist", field="files")
    return out


def item_files(name: Path, meta: dict) -> list[str]:
    """meta.json's ``item_files`` (absent in bundles written before them), checked to be item file names."""
    files = meta.get("item_files", [])
    if not isinstance(files, list) or not all(isinstance(f, str) and ITEM_FILE.match(f) for f in files):
        raise IndexMismatch(name, f"{META}: 'item_files' must list files named items-<k>.json")
    return files


def check_new_ids(folder: Path, ids: list[str], existing: Sequence[str]) -> None:
    seen = set(existing)
    dupes = sorted({i for i, c in Counter(ids).items() if c > 1 or i in seen})
    if dupes:
        shown = ", ".join(repr(d) for d in dupes[:5]) + (" ..." if len(dupes) > 5 else "")
        where = "already in the bundle or repeated" if existing else "repeated"
        raise DataError(folder, f"{len(dupes)} duplicate item id(s) {where}: {shown}", field="item_ids")


def check_payload(folder: Path, ids: list[str], modality_vectors: dict[str, np.ndarray],
                   generated: dict[str, np.ndarray], fused: np.ndarray, *,
                   expect_dims: dict[str, int] | None = None, fused_dim: int | None = None,
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Validate per-modality vectors, generated flags and fused vectors against ``ids``."""
    n = len(ids)
    if not modality_vectors:
        raise DataError(folder, "no modality vectors given", field="modality_vectors")
    if expect_dims is not None and list(modality_vectors) != list(expect_dims):
        if set(modality_vectors) != set(expect_dims):
            raise DataError(folder, f"modalities {sorted(modality_vectors)} differ from the bundle's "
                                    f"{sorted(expect_dims)}", field="modality_vectors")
        modality_vectors = {m: modality_vectors[m] for m in expect_dims}
    if set(generated) != set(modality_vectors):
        raise DataError(folder, f"generated flags are for {sorted(generated)}, vectors for "
                                f"{sorted(modality_vectors)}", field="generated")
    vectors, flags = {}, {}
    for m, v in modality_vectors.items():
        if not _NAME.match(m) or m == FUSED or SEGMENT_SUFFIX.search(m):
            raise DataError(folder, f"modality name {m!r} must match {_NAME.pattern}, not be {FUSED!r} and "
                                    "not end in -<6 digits>", field="modality_vectors")
        try:
            v = check_matrix(v, f"vectors of {m!r}", None if expect_dims is None else expect_dims[m])
        except DataError as exc:
            raise DataError(folder, exc.problem, field=m) from exc
        if len(v) != n:
            raise DataError(folder, f"{len(v)} vectors of {m!r} for {n} item ids", field=m)
        g = np.asarray(generated[m])
        if g.shape != (n,) or g.dtype != bool:
            raise DataError(folder, f"generated flags of {m!r} must be a bool array of shape ({n},), "
                                    f"got {g.dtype} {g.shape}", field="generated")
        vectors[m], flags[m] = v, g
    try:
        fused = check_matrix(fused, "fused vectors", fused_dim)
    except DataError as exc:
        raise DataError(folder, exc.problem, field="fused") from exc
    if len(fused) != n:
        raise DataError(folder, f"{len(fused)} fused vectors for {n} item ids", field="fused")
    return vectors, flags, fused
