"""Atomic file and folder writes: write beside the target, then rename, so a failure never leaves half of one."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``target``.

    On any exception the temporary file is removed and ``target`` stays as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_folder(target: str | Path, *, stem: str | None = None) -> Iterator[Path]:
    """Yield a new empty folder ``.<stem>.tmp-<tag>`` beside ``target`` (``stem``: the target's name); when the
    block succeeds it takes ``target``'s place by rename (an existing ``target`` is first renamed aside to
    ``.<stem>.old-<tag>`` and removed after). On any exception the new folder is removed and ``target`` stays
    as it was. The one folder swap: the sample shop and ``dgmrec_core.versioned.publish`` use it."""
    target = Path(target)
    stem = stem or target.name
    tag = uuid.uuid4().hex[:8]
    tmp = target.parent / f".{stem}.tmp-{tag}"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir()
    try:
        yield tmp
        if target.exists() or target.is_symlink():
            old = target.parent / f".{stem}.old-{tag}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def own_folder_problem(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be an output folder of its own (the current folder or one above it), else None."""
    folder, cwd = Path(folder), Path.cwd().resolve()
    if folder.name in ("", ".", "..") or folder.resolve() == cwd or folder.resolve() in cwd.parents:
        return "is the current folder or one above it: give --out a folder of its own"
    return None


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
