"""The item store in files of its own: written by a build, appended by add_items without rewriting the
rows already stored, bundles written before (items inside meta.json) loaded and migrated on their next
append, a crash at any step leaving the old or the new bundle."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from crashpoints import die_at_fs_call, every_crash_point
from dgmrec_core.atomic import sha256_file
from dgmrec_core.errors import DataError
from retrieval.index.bundle import IndexBundle
from retrieval.index.info import BuildInfo, ItemStore
from retrieval.index.storage import IndexMismatch, verify_bundle
from test_indexes import payload, to_format_1


def _columns(ids: list[str]) -> dict[str, list]:
    return {"text": [f"text of {i}" for i in ids], "image": [None if int(i[-1]) % 3 else f"../img/{i}.png"
                                                             for i in ids],
            "attributes": [{"title": i.upper(), "colour": "red"} for i in ids]}


def _bundle(tmp_path: Path, n: int = 20, **kw) -> tuple[Path, IndexBundle, dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "model.bin").write_bytes(os.urandom(2000))
    folder = tmp_path / "indexes" / "shop"
    data = payload(n)
    bundle = IndexBundle.build(folder, **data, model_fingerprint="m", encoder_fingerprint="e", kind="flat",
                               extra={"note": "x", "pref": np.arange(5.0)},
                               files={"model.pt": tmp_path / "model.bin"}, **kw)
    return folder, bundle, data


def _append(bundle: IndexBundle, n: int, start: int, **kw) -> list[str]:
    new = payload(n, start=start, seed=start)
    bundle.add_items(new["item_ids"], new["modality_vectors"], new["generated"], new["fused"], **kw)
    return new["item_ids"]


def test_build_writes_the_items_as_a_file_and_load_reads_them(tmp_path: Path) -> None:
    folder, bundle, data = _bundle(tmp_path, items=_columns(payload(20)["item_ids"]))
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["item_files"] == ["items-000000.json"] and sorted(meta["item_columns"]) == ["attributes", "image",
                                                                                             "text"]
    assert "items" not in meta["extra"]
    assert IndexBundle.load(folder).item_columns() == _columns(data["item_ids"])
    assert verify_bundle(folder) == []


def test_append_adds_one_file_and_links_what_it_does_not_change(tmp_path: Path) -> None:
    folder, bundle, data = _bundle(tmp_path, items=_columns(payload(20)["item_ids"]))
    before = folder.resolve()
    new = _append(bundle, 5, 100, items=_columns(payload(5, start=100)["item_ids"]))
    after = folder.resolve()
    assert after != before and json.loads((after / "meta.json").read_text())["item_files"] == [
        "items-000000.json", "items-000001.json"]
    for name in ("items-000000.json", "model.pt", "extra_pref.npy"):  # the same file, not a rewritten copy
        assert (after / name).stat().st_ino == (before / name).stat().st_ino, name
    segment = json.loads((after / "items-000001.json").read_text())
    assert segment["first_row"] == 20 and segment["rows"] == 5
    loaded = IndexBundle.load(folder)
    assert loaded.item_columns() == _columns(data["item_ids"] + new)
    assert bundle.item_columns() == loaded.item_columns()  # the writer's own snapshot follows
    assert verify_bundle(folder) == []


def test_append_refuses_missing_or_mismatched_item_data(tmp_path: Path) -> None:
    _, bundle, _ = _bundle(tmp_path, items=_columns(payload(20)["item_ids"]))
    ids = payload(2, start=100)["item_ids"]
    with pytest.raises(DataError, match="give the new items' data"):
        _append(bundle, 2, 100)
    with pytest.raises(DataError, match="differ from the bundle's"):
        _append(bundle, 2, 100, items={"text": ["a", "b"]})
    with pytest.raises(DataError, match="has 1 values for 2 items"):
        _append(bundle, 2, 100, items={**_columns(ids), "text": ["a"]})
    with pytest.raises(DataError, match="JSON-serialisable"):
        _append(bundle, 2, 100, items={**_columns(ids), "text": [object(), "b"]})
    assert len(IndexBundle.load(bundle.folder)) == 20


def test_a_damaged_item_file_is_named(tmp_path: Path) -> None:
    folder, _, _ = _bundle(tmp_path, items=_columns(payload(20)["item_ids"]))
    path = folder / "items-000000.json"
    segment = json.loads(path.read_text())
    segment["first_row"] = 3
    path.write_text(json.dumps(segment))
    meta = json.loads((folder / "meta.json").read_text())
    meta["checksums"][path.name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(IndexMismatch, match="items-000000.json: starts at row 3, expected 0"):
        IndexBundle.load(folder).item_columns()


def _written_before(folder: Path, columns: dict[str, list]) -> None:
    """Turn a bundle into one written before item files: the item columns inside meta.json's extra."""
    meta = json.loads((folder / "meta.json").read_text())
    for name in meta.pop("item_files"):
        (folder / name).unlink()
        meta["checksums"].pop(name)
    del meta["item_columns"]
    meta["extra"]["items"] = columns
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("format_1", [False, True], ids=["format-2", "format-1"])
def test_a_bundle_written_before_item_files_loads_and_migrates_on_append(tmp_path: Path, format_1: bool) -> None:
    ids = payload(20)["item_ids"]
    folder, _, _ = _bundle(tmp_path, items=_columns(ids))
    _written_before(folder, _columns(ids))
    if format_1:  # and before segments: item ids and generated flags inside meta.json too
        to_format_1(folder)
    old = IndexBundle.load(folder)
    assert not old.has_item_files and old.item_columns() is None
    assert old.meta["format_version"] == (1 if format_1 else 2) and old.item_ids == ids
    assert BuildInfo.read(_WithInfo(old)).items == ItemStore.from_columns(_columns(ids))
    with pytest.raises(DataError, match="give the data of its items too"):
        _append(old, 3, 100, items=_columns(payload(3, start=100)["item_ids"]))
    new = _append(old, 3, 100, items=_columns(payload(3, start=100)["item_ids"]), earlier_items=_columns(ids),
                  extra={"note": "x"})
    loaded = IndexBundle.load(folder)
    assert loaded.meta["item_files"] == ["items-000000.json", "items-000001.json"]
    assert loaded.item_columns() == _columns(ids + new) and "items" not in loaded.meta["extra"]
    assert loaded.meta["format_version"] == 2 and loaded.segments == [20, 3] and loaded.item_ids == ids + new
    assert "item_ids" not in loaded.meta and (folder / "ids.json").is_file()
    assert verify_bundle(folder) == []


class _WithInfo:
    """A bundle whose extra holds what BuildInfo needs besides the items (the generic test bundle lacks it)."""

    def __init__(self, bundle: IndexBundle) -> None:
        extra = {**bundle.meta["extra"], "users": [], "encoder": {"model_name": "dgmrec-tiny", "pretrained": None,
                                                                  "seed": 0}, "fused": {"radius": 1.0}}
        self.meta = {**bundle.meta, "extra": extra}
        self.item_columns = bundle.item_columns


def _crash_at(step: int, folder: str) -> None:
    """Append items with their item file, dying (like kill -9) at the ``step``-th rename, replace or symlink."""
    bundle = IndexBundle.load(folder)
    die_at_fs_call(step)
    _append(bundle, 5, 40, items=_columns(payload(5, start=40)["item_ids"]))
    os._exit(0)


def test_a_crash_at_any_step_of_an_append_leaves_the_old_or_the_new_items(tmp_path: Path) -> None:
    old_ids = payload(40)["item_ids"]
    seen = set()

    def check(step: int, folder: str) -> None:
        loaded = IndexBundle.load(folder)
        assert loaded.item_columns() == _columns(loaded.item_ids), step
        assert verify_bundle(folder) == [], step
        seen.add(len(loaded.item_ids))

    def prepare(step: int) -> str:
        return str(_bundle(tmp_path / f"s{step}", n=40, items=_columns(old_ids))[0])

    assert every_crash_point(prepare, _crash_at, check) >= 3 and seen == {40, 45}
