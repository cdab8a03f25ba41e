"""A bundle's folder on disk: versions switched in whole, the lock, meta.json and its checks.

Storage (DESIGN.md, "Safety and storage"): ``indexes/<name>`` is a symbolic link to a sibling version
folder ``.<name>.v<generation>-<tag>``. A write fills ``.<name>.tmp-<tag>``, renames it to a version
folder and swaps the link with one ``os.replace``, all under the lock file ``.<name>.lock``
(``fcntl.flock``, non-blocking); so readers see the old bundle or the new one, never half of one, and a
crash at any moment leaves one of them loadable by name. Stale temp folders and all but the previous
version are removed by the next write. A folder written before this layout is migrated on its next write.
The mechanics live in ``dgmrec_core.versioned`` (training runs use them too). ``meta.json`` records the
size and sha256 of every other file (``meta.json.sha256`` holds meta.json's own hash): sizes are checked
at every load, hashes in full by :func:`verify_bundle`. A write that links a file of the previous version
unchanged carries that file's record over instead of hashing it again (``file_records``).
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Callable

from dgmrec_core.atomic import atomic_write_text, own_folder_problem
from dgmrec_core.atomic import sha256_file as _sha256
from dgmrec_core.errors import DataError
from dgmrec_core.versioned import current_version, publish, remove_stale, write_lock

FORMAT_VERSION = 2  # 2: item ids and generated flags in per-segment files, arrays and indexes in segments
READ_VERSIONS = (1, 2)  # 1: item_ids and generated inside meta.json, one file per array and index
META = "meta.json"
META_SHA = "meta.json.sha256"  # sha256 of meta.json, which cannot record its own hash


class IndexMismatch(ValueError):
    """A bundle on disk does not fit what the caller expects, or is incomplete or corrupt."""

    def __init__(self, folder: str | Path, problem: str) -> None:
        self.folder = str(folder)
        self.problem = problem
        super().__init__(f"index bundle {self.folder}: {problem}")


def check_bundle_target(folder: str | Path, *, force: bool = False) -> None:
    """Refuse (``DataError``) to write a bundle over something that is not one, unless ``force``.

    An absent folder, an empty one, a bundle (``meta.json``) or a link of this layout may be written;
    any other folder only with ``force`` (its files are then replaced). A file is always refused.
    """
    folder = Path(folder)
    problem = own_folder_problem(folder)
    if problem:
        raise DataError(folder, problem, field="--out")
    if folder.is_symlink():
        if os.readlink(folder).startswith(f".{folder.name}.v") or force:
            return
        raise DataError(folder, "is a link that is not an index of this tool; choose another --out or add --force "
                                "to replace it", field="--out")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise DataError(folder, "exists and is a file, not an index folder: choose another --out", field="--out")
    if (folder / META).is_file() or not any(folder.iterdir()) or force:
        return
    raise DataError(folder, f"exists and is not an index (no {META}); choose another --out, or add --force to "
                            "replace everything in it", field="--out")


def index_lock(folder: str | Path) -> AbstractContextManager[None]:
    """Hold the bundle's write lock (``.<name>.lock`` beside it); ``IndexMismatch`` at once when it is held."""
    return write_lock(folder, lambda path: IndexMismatch(
        folder, f"another process is writing this index (lock {path} is held); try again when it has finished"))


def current_bundle_version(folder: Path) -> Path:
    """The version folder a bundle's files are read from (see ``dgmrec_core.versioned.current_version``)."""
    return current_version(folder, META, IndexMismatch)


def bundle_version(folder: str | Path) -> Path:
    """The version folder the bundle named ``folder`` resolves to now (cheap: a link read and a few stats);
    a loaded bundle whose ``path`` differs has been replaced by a newer version."""
    return current_bundle_version(Path(folder))


Records = dict[str, dict[str, Any]]  # file name -> {"size": bytes, "sha256": hex digest}


def file_records(folder: Path, carried: Records | None = None) -> Records:
    """Size and sha256 of every file of a bundle folder except meta.json and its hash.

    ``carried``: the previous version's records of the files linked into ``folder`` unchanged; those are
    taken as they are instead of hashing the file again, so an append hashes only what it wrote. A linked
    file that was damaged keeps its old record, so loads (size) and ``verify_bundle`` (hash) still name it.
    """
    carried = carried or {}
    return {p.name: dict(carried[p.name]) if p.name in carried else {"size": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(folder.iterdir()) if p.is_file() and p.name not in (META, META_SHA)}


def check_sizes(name: Path, folder: Path, meta: dict) -> None:
    """Cheap load-time check: every recorded file exists with its recorded size."""
    for file, record in (meta.get("checksums") or {}).items():
        path = folder / file
        if not path.is_file():
            raise IndexMismatch(name, f"{file} is missing")
        size = path.stat().st_size
        if size != record["size"]:
            raise IndexMismatch(name, f"{file} has {size} bytes but meta.json records {record['size']} "
                                      f"(truncated or replaced); rebuild the index or restore the file")


def verify_bundle(folder: str | Path) -> list[str]:
    """Every problem of a bundle's files, checked in full (sizes and sha256); empty when it is intact."""
    name = Path(folder)
    path = current_bundle_version(name)
    problems = []
    if not (path / META).is_file():
        return [f"{META}: missing"]
    if not (path / META_SHA).is_file():
        problems.append(f"{META_SHA}: missing (a bundle written before checksums; rebuild it to verify it)")
    elif (path / META_SHA).read_text().strip() != _sha256(path / META):
        problems.append(f"{META}: sha256 differs from {META_SHA} (modified or corrupt)")
    try:
        records = json.loads((path / META).read_text()).get("checksums") or {}
    except (OSError, ValueError, AttributeError) as exc:
        return [*problems, f"{META}: not valid JSON ({exc})"]
    for file, record in sorted(records.items()):
        target = path / file
        if not target.is_file():
            problems.append(f"{file}: missing")
        elif target.stat().st_size != record["size"]:
            problems.append(f"{file}: {target.stat().st_size} bytes, recorded {record['size']} (truncated or replaced)")
        elif _sha256(target) != record["sha256"]:
            problems.append(f"{file}: sha256 differs from the one recorded (modified or corrupt)")
    for p in sorted(path.iterdir()):
        if p.name not in records and p.name not in (META, META_SHA):
            problems.append(f"{p.name}: not part of the bundle (unrecorded file)")
    return problems


def write_bundle(folder: Path, meta: dict, write_files: Callable[[Path], Records | None],
                  expect_meta_sha: str | None = None) -> tuple[dict, Path]:
    """Write a bundle into a new version folder and switch ``folder`` to it, under the lock.

    ``write_files(tmp)`` puts every file but meta.json into the folder being filled and returns the
    records (from the previous meta.json) of the files it linked there unchanged, or None.
    ``expect_meta_sha``: refuse (``IndexMismatch``) when the bundle on disk changed since it was loaded.
    Returns the meta written (with generation and checksums) and the version folder.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    with index_lock(folder):
        try:
            previous = current_bundle_version(folder)
        except IndexMismatch:
            previous = None
        if expect_meta_sha is not None and (previous is None or not (previous / META).is_file()
                                            or _sha256(previous / META) != expect_meta_sha):
            raise IndexMismatch(folder, "the index changed since it was loaded (another add-items or build "
                                        "finished meanwhile); nothing was written: run the command again")
        remove_stale(folder, keep={p for p in (previous,) if p is not None})
        try:
            generation = int(json.loads((previous / META).read_text()).get("generation", 0)) + 1
        except (OSError, ValueError, TypeError, AttributeError):
            generation = 1
        written = {}

        def fill(tmp: Path) -> None:
            carried = write_files(tmp)
            written.update(meta, generation=generation, checksums=file_records(tmp, carried))
            text = json.dumps(written, separators=(",", ":"))
            atomic_write_text(tmp / META, text)
            atomic_write_text(tmp / META_SHA, hashlib.sha256(text.encode()).hexdigest() + "\n")

        version = publish(folder, fill, generation)
        remove_stale(folder, keep={version, *(p for p in (previous,) if p is not None and p.parent == folder.parent)})
    return written, version


# meta.json keys and the JSON types they must have: in every format version, and per version
_META_TYPES = {"format_version": int, "model_fingerprint": str, "encoder_fingerprint": (dict, str),
               "modalities": list, "dims": dict, "fused_dim": int, "extra_arrays": list}
_VERSION_TYPES = {1: {"item_ids": list, "generated": dict}, 2: {"count": int, "segments": list}}


def read_meta(folder: Path, name: Path | None = None) -> dict:
    """meta.json of a version folder, checked: its keys, their types and (format 1) the per-item lists."""
    name = name or folder
    path = folder / META
    if not path.is_file():
        raise IndexMismatch(name, f"{META} is missing")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IndexMismatch(name, f"{META} is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise IndexMismatch(name, f"{META} must hold a JSON object")
    version = meta.get("format_version")
    if isinstance(version, int) and version not in READ_VERSIONS:
        raise IndexMismatch(name, f"format version {version}, this code reads "
                                  f"{', '.join(map(str, READ_VERSIONS))}")
    types = {**_META_TYPES, **_VERSION_TYPES.get(version, {})}
    missing = [key for key in types if key not in meta]
    if missing:
        raise IndexMismatch(name, f"{META} lacks {', '.join(missing)}")
    for key, kind in types.items():
        if not isinstance(meta[key], kind) or (kind is int and isinstance(meta[key], bool)):
            raise IndexMismatch(name, f"{META}: '{key}' has the wrong type ({type(meta[key]).__name__})")
    for m in meta["modalities"]:
        if not isinstance(m, str) or not isinstance(meta["dims"].get(m), int):
            raise IndexMismatch(name, f"{META}: modality {m!r} has no integer dimension in 'dims'")
    if version == 1:
        _check_items_v1(name, meta)
    elif not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in meta["segments"]) \
            or not meta["segments"] or sum(meta["segments"]) != meta["count"]:
        raise IndexMismatch(name, f"{META}: 'segments' must list the rows of each segment, {meta['count']} in all")
    return meta


def _check_items_v1(name: Path, meta: dict) -> None:
    """Format 1 keeps the item ids and generated flags in meta.json: strings, and flags for every item."""
    n = len(meta["item_ids"])
    if not all(isinstance(i, str) for i in meta["item_ids"]):
        raise IndexMismatch(name, f"{META}: item_ids must all be strings")
    for m in meta["modalities"]:
        flags = meta["generated"].get(m, ())
        if not isinstance(flags, list) or len(flags) != n:
            raise IndexMismatch(name, f"{META}: generated flags of {m!r} do not cover the {n} items")
