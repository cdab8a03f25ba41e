"""Bundle storage: recorded sizes and hashes, the write lock, stale snapshots, and crashes mid-switch."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from retrieval.index.bundle import IndexBundle
from retrieval.index.storage import IndexMismatch, index_lock, verify_bundle
from crashpoints import die_at_fs_call, every_crash_point
from test_indexes import build, payload, to_format_1
from ui.cli import main

KINDS = ["image.faiss", "fused.faiss", "features_text.npy", "items.npy", "extra_pref.npy", "model.pt", "meta.json"]


def _bundle(tmp_path: Path, n: int = 40) -> tuple[Path, IndexBundle, dict]:
    (tmp_path / "model.bin").write_bytes(os.urandom(3000))
    folder = tmp_path / "indexes" / "shop"
    bundle, data = build(folder, n=n, extra={"pref": np.arange(50.0)}, files={"model.pt": tmp_path / "model.bin"})
    return folder, bundle, data


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if any(t in p.name for t in (".tmp-", ".old-", ".link-")))


def _flip(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) - 5 if offset is None else offset
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", KINDS)
def test_verify_names_a_flipped_byte_in_each_kind_of_file(tmp_path: Path, name: str, capsys) -> None:
    folder, _, _ = _bundle(tmp_path)
    assert verify_bundle(folder) == []
    assert main(["verify", "--index", str(folder)]) == 0
    assert "ok:" in capsys.readouterr().out
    if name == "meta.json":  # a letter of the model fingerprint changes, the JSON stays valid
        text = (folder / name).read_text()
        (folder / name).write_text(text.replace('"model-a"', '"model-b"', 1))
    else:
        _flip(folder / name)
    problems = verify_bundle(folder)
    assert len(problems) == 1 and problems[0].startswith(f"{name}:") and "sha256" in problems[0]
    assert main(["verify", "--index", str(folder)]) == 1
    out = capsys.readouterr().out
    assert f"BAD {folder}: {name}: sha256" in out and "1 problem(s)" in out


def test_verify_names_missing_and_planted_files(tmp_path: Path) -> None:
    folder, _, _ = _bundle(tmp_path)
    (folder / "items.npy").unlink()
    (folder / "evil.html").write_text("<script>")
    assert verify_bundle(folder) == ["items.npy: missing", "evil.html: not part of the bundle (unrecorded file)"]


@pytest.mark.parametrize("name", ["features_text.npy", "items.npy", "extra_pref.npy", "model.pt", "image.faiss"])
def test_load_refuses_a_truncated_file(tmp_path: Path, name: str, capsys) -> None:
    folder, _, _ = _bundle(tmp_path)
    path = folder / name
    path.write_bytes(path.read_bytes()[:-64])
    with pytest.raises(IndexMismatch, match=f"{folder}: .*{name}"):
        IndexBundle.load(folder)
    assert main(["verify", "--index", str(folder)]) == 1
    assert f"{name}: " in capsys.readouterr().out


def test_load_refuses_a_truncated_array_of_an_older_bundle(tmp_path: Path) -> None:
    """Without recorded sizes (bundles written before checksums) a truncated array is still a message."""
    folder, _, _ = _bundle(tmp_path)
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["checksums"]
    meta_path.write_text(json.dumps(meta))
    path = folder / "features_text.npy"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(IndexMismatch, match="features_text.npy is not a readable array"):
        IndexBundle.load(folder)


@pytest.mark.parametrize("field, value, message, format_1", [
    ("item_ids", "abc", "'item_ids' has the wrong type", True),
    ("item_ids", [1, 2], "item_ids must all be strings", True),
    ("dims", {"image": "16", "text": 12}, "modality 'image' has no integer dimension", False),
    ("generated", {"image": 3, "text": 4}, "generated flags of 'image'", True),
    ("segments", "abc", "'segments' has the wrong type", False),
    ("segments", [30, 5], "'segments' must list the rows of each segment, 40 in all", False),
    ("count", True, "'count' has the wrong type", False),
    ("format_version", 3, "format version 3, this code reads 1, 2", False),
])
def test_load_refuses_malformed_metadata(tmp_path: Path, field: str, value, message: str, format_1: bool) -> None:
    folder, _, _ = _bundle(tmp_path)
    if format_1:
        to_format_1(folder)
    meta = json.loads((folder / "meta.json").read_text())
    meta[field] = value
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(IndexMismatch, match=message):
        IndexBundle.load(folder)


def test_a_held_lock_refuses_writers_with_a_message(tmp_path: Path) -> None:
    folder, bundle, _ = _bundle(tmp_path)
    new = payload(5, start=40, seed=3)
    with index_lock(folder):
        with pytest.raises(IndexMismatch, match=f"{folder}: another process is writing this index .*shop.lock"):
            bundle.add_items(new["item_ids"], new["modality_vectors"], new["generated"], new["fused"])
        with pytest.raises(IndexMismatch, match="another process is writing"):
            _bundle(tmp_path)
    assert len(IndexBundle.load(folder)) == 40 and len(bundle) == 40
    bundle.add_items(new["item_ids"], new["modality_vectors"], new["generated"], new["fused"])
    assert len(IndexBundle.load(folder)) == 45


def test_add_items_refuses_a_bundle_changed_since_it_was_loaded(tmp_path: Path) -> None:
    folder, _, _ = _bundle(tmp_path)
    first, second = IndexBundle.load(folder), IndexBundle.load(folder)
    a, b = payload(5, start=40, seed=3), payload(4, start=45, seed=4)
    first.add_items(a["item_ids"], a["modality_vectors"], a["generated"], a["fused"])
    with pytest.raises(IndexMismatch, match="changed since it was loaded"):
        second.add_items(b["item_ids"], b["modality_vectors"], b["generated"], b["fused"])
    assert len(second) == 45 and second.indexes["image"].ntotal == 45  # back in step with disk
    second.add_items(b["item_ids"], b["modality_vectors"], b["generated"], b["fused"])
    loaded = IndexBundle.load(folder)
    assert loaded.item_ids == [f"item{i}" for i in range(49)] and verify_bundle(folder) == []
    np.testing.assert_array_equal(loaded.features("text")[40:45], a["modality_vectors"]["text"])


def _add_in_child(folder: str, start: int, seed: int, barrier, results) -> None:
    bundle = IndexBundle.load(folder)
    new = payload(5, start=start, seed=seed)
    barrier.wait()
    try:
        bundle.add_items(new["item_ids"], new["modality_vectors"], new["generated"], new["fused"])
        results.put((start, "ok"))
    except IndexMismatch as exc:
        results.put((start, str(exc)))


def test_concurrent_add_items_lose_nothing(tmp_path: Path) -> None:
    folder, _, _ = _bundle(tmp_path)
    ctx = multiprocessing.get_context("fork")
    for round_ in range(3):
        before = IndexBundle.load(folder).item_ids
        barrier, results = ctx.Barrier(2), ctx.Queue()
        starts = [1000 * (round_ + 1), 1000 * (round_ + 1) + 500]
        procs = [ctx.Process(target=_add_in_child, args=(str(folder), s, s, barrier, results)) for s in starts]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        outcome = dict(results.get(timeout=5) for _ in procs)
        applied = [s for s in starts if outcome[s] == "ok"]
        assert applied, outcome
        for s in set(starts) - set(applied):
            assert "another process is writing" in outcome[s] or "changed since it was loaded" in outcome[s]
        loaded = IndexBundle.load(folder)
        expected = before + [f"item{s + i}" for s in applied for i in range(5)]
        assert sorted(loaded.item_ids) == sorted(expected)
        assert loaded.features("image").shape[0] == len(expected) == loaded.indexes["fused"].ntotal
        assert verify_bundle(folder) == []


def _crash_at(step: int, folder: str) -> None:
    """Add items, dying (like kill -9) at the ``step``-th rename, replace or symlink call."""
    bundle = IndexBundle.load(folder)
    die_at_fs_call(step)
    new = payload(5, start=40, seed=3)
    bundle.add_items(new["item_ids"], new["modality_vectors"], new["generated"], new["fused"])
    os._exit(0)


@pytest.mark.parametrize("legacy", [False, True], ids=["versioned", "older-real-folder"])
def test_a_crash_at_any_step_leaves_the_old_or_the_new_bundle(tmp_path: Path, legacy: bool) -> None:
    old_ids, new_ids = [f"item{i}" for i in range(40)], [f"item{i}" for i in range(45)]
    seen = set()

    def prepare(step: int) -> str:
        shutil.rmtree(tmp_path / "indexes", ignore_errors=True)
        folder, _, _ = _bundle(tmp_path)
        if legacy:  # a bundle written before versioned folders: a real folder
            real = folder.resolve()
            folder.unlink()
            real.rename(folder)
        return str(folder)

    def check(step: int, name: str) -> None:
        folder = Path(name)
        loaded = IndexBundle.load(folder)
        assert loaded.item_ids in (old_ids, new_ids), step
        assert loaded.features("image").shape[0] == len(loaded.item_ids)
        seen.add(len(loaded.item_ids))
        # the next writer cleans up and works
        more = payload(2, start=100, seed=5)
        loaded.add_items(more["item_ids"], more["modality_vectors"], more["generated"], more["fused"])
        assert len(IndexBundle.load(folder)) == len(loaded.item_ids) and verify_bundle(folder) == []
        assert _leftovers(folder.parent) == []

    assert every_crash_point(prepare, _crash_at, check) >= 4 and seen == {40, 45}
