"""Versioned folders: a name that is a symbolic link to one complete version, switched with one rename.

``<parent>/NAME`` links to a sibling version folder ``.NAME.v<generation>-<tag>``. A write fills
``.NAME.tmp-<tag>``, renames it to a version folder and swaps the link with one ``os.replace``, under
the lock file ``.NAME.lock`` (``fcntl.flock``, non-blocking). Readers resolve the link once and see one
whole version; a kill at any step leaves the old or the new version loadable by name. A real folder
from before this layout is renamed to a version first (readers then fall back to the newest complete
version). Index bundles (``retrieval/index/``) and training runs (``dgmrec train --out``) use it.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .atomic import atomic_folder
from .errors import DataError

ErrorFactory = Callable[[Path, str], Exception]  # (folder, problem) -> the exception to raise
_GENERATION = re.compile(r"\.v(\d+)-[0-9a-f]+$")


def lock_path(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.lock"


@contextmanager
def write_lock(folder: str | Path, busy: Callable[[Path], Exception]) -> Iterator[None]:
    """Hold ``folder``'s write lock (``.<name>.lock`` beside it); raise ``busy(lock file)`` at once when held."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(folder)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy(path) from None
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with other writers)


def versions(folder: Path) -> list[Path]:
    """Version folders of ``folder``, oldest generation first."""
    if not folder.parent.is_dir():
        return []
    found = [p for p in folder.parent.glob(f".{folder.name}.v*") if p.is_dir() and not p.is_symlink()]
    return sorted(found, key=lambda p: p.name)


def current_version(folder: Path, complete: str, error: ErrorFactory = DataError) -> Path:
    """The folder ``folder``'s files are read from: its link's target, the folder itself (older layout) or,
    after a crash while migrating an older folder, its newest version holding the file ``complete``."""
    if folder.is_dir():
        return folder.resolve() if folder.is_symlink() else folder
    done = [p for p in versions(folder) if (p / complete).is_file()]
    if done and not folder.is_symlink():
        return done[-1]
    if folder.is_symlink():
        raise error(folder, f"link to a missing version folder ({os.readlink(folder)})")
    raise error(folder, "folder does not exist")


def generation(version: Path | None) -> int:
    """The generation in a version folder's name (0 for anything else)."""
    match = _GENERATION.search(version.name) if version is not None else None
    return int(match.group(1)) if match else 0


def remove_stale(folder: Path, keep: set[Path]) -> None:
    """Remove leftovers of interrupted writes and every version not in ``keep`` (call under the lock)."""
    stale = [*folder.parent.glob(f".{folder.name}.tmp-*"), *folder.parent.glob(f".{folder.name}.old-*"),
             *folder.parent.glob(f".{folder.name}.link-*")]
    stale += [v for v in versions(folder) if v not in keep]
    for p in stale:
        if p.is_symlink() or p.is_file():
            p.unlink(missing_ok=True)
        else:
            shutil.rmtree(p, ignore_errors=True)


def point(folder: Path, version: Path, tag: str) -> None:
    """Make ``folder`` a link to ``version`` with one rename (an older real folder becomes a version first)."""
    link = folder.parent / f".{folder.name}.link-{tag}"
    os.symlink(version.name, link)
    if folder.exists() and not folder.is_symlink():
        os.rename(folder, folder.parent / f".{folder.name}.v000000-{tag}")  # readers fall back to versions
    os.replace(link, folder)


def publish(folder: Path, fill: Callable[[Path], None], generation: int) -> Path:
    """Fill a temp folder with ``fill(tmp)``, rename it to version ``generation`` and point ``folder`` at it.

    Call under the lock. On any failure the temp or new version folder is removed and ``folder`` is left
    as it was; returns the new version folder.
    """
    tag = uuid.uuid4().hex[:8]
    version = folder.parent / f".{folder.name}.v{generation:06d}-{tag}"
    try:
        with atomic_folder(version, stem=folder.name) as tmp:  # filled as .NAME.tmp-<tag>, renamed to version
            fill(tmp)
        point(folder, version, tag)
    except BaseException:
        if version.exists() and not (folder.is_symlink() and folder.resolve() == version.resolve()):
            shutil.rmtree(version, ignore_errors=True)
        raise
    return version
