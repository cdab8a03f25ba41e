"""Bundles in segments (format 2): an append writes only its own rows' files and links the rest, searches
over segments equal one index built in one go, compaction joins the segments, bundles of format 1 load and
migrate on their next append, and damaged segments are named."""
from __future__ import annotations

import json
import os
import re
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from crashpoints import die_at_fs_call, every_crash_point
from dgmrec_core.errors import DataError
from retrieval.index import segments, storage
from retrieval.index.bundle import IndexBundle
from retrieval.index.segments import SegmentedRows
from retrieval.index.storage import IndexMismatch, verify_bundle
from test_indexes import DIMS, brute_force, payload, recall, record, to_format_1
from ui.cli import main

ARGS = {"model_fingerprint": "model-a", "encoder_fingerprint": "e"}
KEYS = [*DIMS, "fused"]


def _columns(ids: list[str]) -> dict[str, list]:
    return {"text": [f"text of {i}" for i in ids], "attributes": [{"title": i.upper()} for i in ids]}


def _build(folder: Path, n: int, kind: str = "flat", **kw) -> tuple[IndexBundle, dict]:
    data = payload(n)
    (folder.parent / "model.bin").parent.mkdir(parents=True, exist_ok=True)
    (folder.parent / "model.bin").write_bytes(os.urandom(1000))
    bundle = IndexBundle.build(folder, **data, **ARGS, kind=kind, extra={"pref": np.arange(4.0)},
                               files={"model.pt": folder.parent / "model.bin"}, items=_columns(data["item_ids"]), **kw)
    return bundle, data


def _append(bundle: IndexBundle, n: int, start: int) -> dict:
    new = payload(n, start=start, seed=start)
    bundle.add_items(new["item_ids"], new["modality_vectors"], new["generated"], new["fused"],
                     items=_columns(new["item_ids"]))
    return new


def _joined(*parts: dict) -> dict:
    return {"item_ids": [i for p in parts for i in p["item_ids"]],
            "modality_vectors": {m: np.concatenate([p["modality_vectors"][m] for p in parts]) for m in DIMS},
            "generated": {m: np.concatenate([p["generated"][m] for p in parts]) for m in DIMS},
            "fused": np.concatenate([p["fused"] for p in parts])}


def _inodes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in folder.resolve().iterdir()}


def _assert_same_search(a: IndexBundle, b: IndexBundle, queries: dict) -> None:
    for key in KEYS:
        x, y = a.search(key, queries[key], 10), b.search(key, queries[key], 10)
        np.testing.assert_array_equal(x.rows, y.rows)
        np.testing.assert_array_equal(x.scores, y.scores)
        np.testing.assert_array_equal(x.generated, y.generated)


def _queries(n: int = 25) -> dict:
    rng = np.random.default_rng(77)
    return {key: rng.standard_normal((n, DIMS.get(key, 8))).astype(np.float32) for key in KEYS}


def test_an_append_writes_only_its_segment_and_meta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "indexes" / "shop"
    bundle, _ = _build(folder, 5000)
    before = _inodes(folder)
    old_meta = json.loads((folder / "meta.json").read_text())
    hashed = []
    real_sha = storage._sha256
    monkeypatch.setattr(storage, "_sha256", lambda p: hashed.append(Path(p).name) or real_sha(p))
    _append(bundle, 10, 5000)
    after = _inodes(folder)
    new = {name for name, ino in after.items() if before.get(name) != ino}
    assert new == {"image-000001.faiss", "text-000001.faiss", "fused-000001.faiss", "features_image-000001.npy",
                   "features_text-000001.npy", "items-000001.npy", "ids-000001.json", "items-000001.json",
                   "meta.json", "meta.json.sha256"}
    assert set(before) - {"meta.json", "meta.json.sha256"} <= set(after)  # every earlier file: the same inode
    written = sum((folder / name).stat().st_size for name in new)
    total = sum((folder / name).stat().st_size for name in before)
    assert total > 500_000 and written < 12_000, (written, total)
    assert set(hashed) - {"meta.json"} <= new  # linked files are not hashed again ...
    meta = json.loads((folder / "meta.json").read_text())
    for name, old in old_meta["checksums"].items():  # ... their records are carried over
        assert meta["checksums"][name] == old
    assert meta["segments"] == [5000, 10] and meta["count"] == 5010
    assert "item_ids" not in meta and "generated" not in meta
    assert verify_bundle(folder) == []


def test_meta_json_does_not_grow_with_the_items(tmp_path: Path) -> None:
    sizes = []
    for n in (100, 4000):
        bundle, _ = _build(tmp_path / f"b{n}" / "shop", n)
        _append(bundle, 10 * n, n)
        sizes.append(len((bundle.folder / "meta.json").read_text()))
    assert abs(sizes[1] - sizes[0]) < 40, sizes  # only the digits of the counts and sizes differ


def test_search_after_appends_equals_a_one_shot_build(tmp_path: Path) -> None:
    bundle, first = _build(tmp_path / "a" / "shop", 300)
    parts = [first, _append(bundle, 20, 300), _append(bundle, 1, 320), _append(bundle, 35, 321)]
    loaded = IndexBundle.load(bundle.folder)
    whole = _joined(*parts)
    one_shot = IndexBundle.build(tmp_path / "b" / "shop", **whole, **ARGS, kind="flat")
    assert loaded.segments == [300, 20, 1, 35] and one_shot.segments == [356]
    queries = _queries()
    _assert_same_search(loaded, one_shot, queries)
    _assert_same_search(bundle, one_shot, queries)  # the writer's own snapshot too
    seen = [one_shot.search("text", queries["text"][:2], 5).rows[0, 0], 310, 320]
    np.testing.assert_array_equal(loaded.search("text", queries["text"], 10, exclude_rows=seen).rows,
                                  one_shot.search("text", queries["text"], 10, exclude_rows=seen).rows)
    assert loaded.item_ids == whole["item_ids"] and len(loaded) == 356
    assert [loaded.row_of(i) for i in ("item0", "item299", "item300", "item320", "item355")] == [0, 299, 300, 320,
                                                                                                 355]
    for m in DIMS:
        np.testing.assert_array_equal(loaded.generated[m], whole["generated"][m])
        features = loaded.features(m)
        assert isinstance(features, SegmentedRows) and features.shape == (356, DIMS[m]) and len(features) == 356
        np.testing.assert_array_equal(features, whole["modality_vectors"][m])
        np.testing.assert_array_equal(features[295:330], whole["modality_vectors"][m][295:330])
        np.testing.assert_array_equal(features[[355, 0, 320, 300]], whole["modality_vectors"][m][[355, 0, 320, 300]])
        np.testing.assert_array_equal(features[-1], whole["modality_vectors"][m][-1])
        np.testing.assert_array_equal(features[310:, 2], whole["modality_vectors"][m][310:, 2])
        np.testing.assert_array_equal(np.array(features, dtype=np.float64), whole["modality_vectors"][m])
    np.testing.assert_array_equal(loaded.fused_items()[np.array([3, 333])], whole["fused"][[3, 333]])
    assert loaded.item_columns() == _columns(whole["item_ids"])
    assert verify_bundle(bundle.folder) == []


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
def test_approximate_kinds_search_their_segments_as_the_writer_does(tmp_path: Path, kind: str) -> None:
    bundle, first = _build(tmp_path / "a" / "shop", 3000, kind=kind)
    parts = [first, _append(bundle, 300, 3000), _append(bundle, 200, 3300)]
    loaded = IndexBundle.load(bundle.folder)
    assert loaded.segments == [3000, 300, 200] and loaded.indexes["image"].kind == kind
    assert loaded.indexes["text"].segments == (3 if kind == "hnsw" else 1)  # HNSW: graphs searched together
    queries = _queries(40)
    _assert_same_search(loaded, bundle, queries)  # merged on load exactly as the writer added them
    whole = _joined(*parts)
    one_shot = IndexBundle.build(tmp_path / "b" / "shop", **whole, **ARGS, kind=kind)
    for m in DIMS:  # the appended items are found, and recall is that of an index built in one go
        np.testing.assert_array_equal(loaded.search(m, whole["modality_vectors"][m][3000::25], 1).rows[:, 0],
                                      np.arange(3000, 3500, 25))
        truth = brute_force(whole["modality_vectors"][m], queries[m], 10)
        assert recall(loaded.search(m, queries[m], 10).rows, truth) >= recall(
            one_shot.search(m, queries[m], 10).rows, truth) - 0.08
    assert loaded.compact() and IndexBundle.load(bundle.folder).segments == [3500]
    if kind != "hnsw":  # the same index, written whole
        _assert_same_search(IndexBundle.load(bundle.folder), bundle, queries)
    assert verify_bundle(bundle.folder) == []


def test_compact_joins_every_segment_and_keeps_the_results(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bundle, first = _build(tmp_path / "indexes" / "shop", 200)
    parts = [first, *(_append(bundle, 7, 200 + 7 * i) for i in range(3))]
    queries = _queries()
    segmented = IndexBundle.load(bundle.folder)
    assert main(["compact", "--index", str(bundle.folder)]) == 0
    assert "4 segments -> 1 (221 items)" in capsys.readouterr().out
    compacted = IndexBundle.load(bundle.folder)
    assert compacted.segments == [221] and compacted.meta["item_files"] == ["items-000000.json"]
    later = [p.name for p in bundle.folder.iterdir() if re.search(r"-\d{6}\.", p.name)]
    assert later == ["items-000000.json"]
    _assert_same_search(compacted, segmented, queries)
    whole = _joined(*parts)
    assert compacted.item_ids == whole["item_ids"] and compacted.item_columns() == _columns(whole["item_ids"])
    np.testing.assert_array_equal(compacted.features("image"), whole["modality_vectors"]["image"])
    assert isinstance(compacted.features("image"), np.memmap)
    assert verify_bundle(bundle.folder) == []
    assert main(["compact", "--index", str(bundle.folder)]) == 0
    assert "one segment already" in capsys.readouterr().out
    _append(compacted, 3, 900)  # and appends go on from one segment
    assert IndexBundle.load(bundle.folder).segments == [221, 3]


def test_an_append_past_the_threshold_compacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert segments.MAX_SEGMENTS == 16
    monkeypatch.setattr(segments, "MAX_SEGMENTS", 3)
    bundle, first = _build(tmp_path / "a" / "shop", 100)
    parts = [first, _append(bundle, 5, 100), _append(bundle, 5, 105)]
    assert bundle.segments == [100, 5, 5]
    parts.append(_append(bundle, 5, 110))
    assert bundle.segments == [115] and IndexBundle.load(bundle.folder).segments == [115]
    one_shot = IndexBundle.build(tmp_path / "b" / "shop", **_joined(*parts), **ARGS, kind="flat")
    _assert_same_search(IndexBundle.load(bundle.folder), one_shot, _queries())
    assert verify_bundle(bundle.folder) == []


def _crash_at(step: int, folder: str, *, threshold: int) -> None:
    """Append (compacting past ``threshold`` segments), dying like kill -9 at the ``step``-th rename, replace
    or symlink."""
    segments.MAX_SEGMENTS = threshold
    bundle = IndexBundle.load(folder)
    die_at_fs_call(step)
    _append(bundle, 5, 500)
    os._exit(0)


@pytest.mark.parametrize("threshold", [16, 2], ids=["append", "compacting-append"])
def test_a_crash_at_any_step_of_a_segmented_append_leaves_the_old_or_the_new_bundle(tmp_path: Path,
                                                                                  threshold: int) -> None:
    seen = set()

    def prepare(step: int) -> str:
        bundle, _ = _build(tmp_path / f"s{step}" / "shop", 40)
        _append(bundle, 3, 40)
        return str(bundle.folder)

    def check(step: int, folder: str) -> None:
        loaded = IndexBundle.load(folder)
        assert loaded.segments in ([40, 3], [40, 3, 5] if threshold == 16 else [48]), step
        assert loaded.item_columns() == _columns(loaded.item_ids) and verify_bundle(folder) == []
        seen.add(len(loaded))
        _append(loaded, 2, 900)  # the next writer cleans up and works
        assert verify_bundle(folder) == []

    assert every_crash_point(prepare, partial(_crash_at, threshold=threshold), check) >= 4 and seen == {43, 48}


def test_a_bundle_of_format_1_loads_and_migrates_on_its_next_append(tmp_path: Path) -> None:
    bundle, first = _build(tmp_path / "a" / "shop", 300)
    folder = bundle.folder
    to_format_1(folder)
    old = IndexBundle.load(folder)
    assert old.meta["format_version"] == 1 and old.segments == [300] and old.item_ids == first["item_ids"]
    np.testing.assert_array_equal(old.generated["text"], first["generated"]["text"])
    queries = _queries()
    _assert_same_search(old, bundle, queries)
    before = _inodes(folder)
    new = _append(old, 12, 300)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["format_version"] == storage.FORMAT_VERSION == 2 and meta["segments"] == [300, 12]
    assert "item_ids" not in meta and "generated" not in meta
    after = _inodes(folder)
    for name in ("image.faiss", "fused.faiss", "features_text.npy", "items.npy", "items-000000.json", "model.pt"):
        assert after[name] == before[name], name  # the single files of format 1 are segment 0, linked
    assert "ids.json" in after and "ids.json" not in before
    loaded = IndexBundle.load(folder)
    one_shot = IndexBundle.build(tmp_path / "b" / "shop", **_joined(first, new), **ARGS, kind="flat")
    _assert_same_search(loaded, one_shot, queries)
    assert loaded.item_ids == one_shot.item_ids and verify_bundle(folder) == []


def test_a_damaged_segment_is_refused_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bundle, _ = _build(tmp_path / "indexes" / "shop", 100, kind="ivf")
    _append(bundle, 10, 100)
    folder = bundle.folder
    path = folder / "text-000001.faiss"
    good = path.read_bytes()
    path.write_bytes(good[:-8])
    with pytest.raises(IndexMismatch, match="text-000001.faiss has .* bytes but meta.json records"):
        IndexBundle.load(folder)
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    assert verify_bundle(folder) == ["text-000001.faiss: sha256 differs from the one recorded (modified or corrupt)"]
    assert main(["verify", "--index", str(folder)]) == 1
    assert "BAD" in capsys.readouterr().out
    path.write_bytes(b"\0" * len(good))  # same size, recorded: past the size and hash checks
    record(folder, path.name)
    with pytest.raises(IndexMismatch, match="text-000001.faiss: (not a readable index segment|index segment)"):
        IndexBundle.load(folder)
    path.write_bytes(good)
    record(folder, path.name)
    ids = folder / "ids-000001.json"
    segment = json.loads(ids.read_text())
    segment["item_ids"][3] = "item7"  # an id of segment 0
    ids.write_text(json.dumps(segment))
    record(folder, ids.name)
    with pytest.raises(IndexMismatch, match="ids-000001.json: an item id repeats"):
        IndexBundle.load(folder)
    segment["item_ids"][3], segment["generated"]["image"] = "itemX", "01"
    ids.write_text(json.dumps(segment))
    record(folder, ids.name)
    with pytest.raises(IndexMismatch, match="ids-000001.json: generated flags of 'image' must be 10 characters"):
        IndexBundle.load(folder)
    (folder / "features_image-000001.npy").unlink()
    with pytest.raises(IndexMismatch, match="features_image-000001.npy is missing"):
        IndexBundle.load(folder)


def test_files_and_modalities_that_would_clash_with_segment_files_are_refused(tmp_path: Path) -> None:
    data = payload(5)
    with pytest.raises(DataError, match="ids-<k>.json"):
        IndexBundle.build(tmp_path / "a", **data, **ARGS, files={"ids.json": __file__})
    data["modality_vectors"]["text-000001"] = data["modality_vectors"].pop("text")
    data["generated"]["text-000001"] = data["generated"].pop("text")
    with pytest.raises(DataError, match="not end in -<6 digits>"):
        IndexBundle.build(tmp_path / "b", **data, **ARGS)
