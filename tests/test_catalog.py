"""Catalog ingestion: CSV/TSV/JSONL loading, validation with line numbers, skip_bad, interactions."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dgmrec_core.errors import DataError
from dgmrec_core.interactions import load_interactions
from retrieval.build.interactions import catalog_interactions
from retrieval.catalog import Catalog, Problem, load_catalog


def _png(path: Path, color: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), color).save(path)
    return path


def _write_csv(path: Path, rows: list[list[str]], delimiter: str = ",") -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    return path


@pytest.fixture()
def shop(tmp_path: Path) -> Path:
    """A folder with three images under img/."""
    for name, color in [("a", (255, 0, 0)), ("b", (0, 255, 0)), ("c", (0, 0, 255))]:
        _png(tmp_path / "img" / f"{name}.png", color)
    return tmp_path


GOOD_ROWS = [
    ["item_id", "text", "image", "title"],
    ["a", "a red mug", "img/a.png", "Mug"],
    ["b", "", "img/b.png", "Plant"],
    ["c", "blue, \"quoted\"\nsecond line", "", "Cup"],
    ["d", "", "", "Nothing"],
]


def test_load_csv(shop: Path) -> None:
    catalog, problems = load_catalog(_write_csv(shop / "cat.csv", GOOD_ROWS))
    assert problems == []
    assert isinstance(catalog, Catalog)
    assert catalog.item_ids == ["a", "b", "c", "d"]
    assert catalog.n_items == 4
    assert catalog.texts == ["a red mug", None, "blue, \"quoted\"\nsecond line", None]
    assert catalog.image_paths[0] == (shop / "img" / "a.png").resolve()
    assert all(p is None or p.is_absolute() for p in catalog.image_paths)
    np.testing.assert_array_equal(catalog.has_text, [True, False, True, False])
    np.testing.assert_array_equal(catalog.has_image, [True, True, False, False])
    assert catalog.extra[1] == {"title": "Plant"}
    assert catalog.index["c"] == 2
    assert catalog.source == (shop / "cat.csv").resolve()


def test_load_tsv_and_jsonl_match_csv(shop: Path) -> None:
    from_csv, _ = load_catalog(_write_csv(shop / "cat.csv", GOOD_ROWS))
    from_tsv, _ = load_catalog(_write_csv(shop / "cat.tsv", GOOD_ROWS, delimiter="\t"))
    lines = [json.dumps(dict(zip(GOOD_ROWS[0], row))) for row in GOOD_ROWS[1:]]
    lines[3] = json.dumps({"item_id": "d", "title": "Nothing"})  # absent keys mean missing modalities
    (shop / "cat.jsonl").write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")
    from_jsonl, problems = load_catalog(shop / "cat.jsonl")
    assert problems == []
    for other in (from_tsv, from_jsonl):
        assert other.item_ids == from_csv.item_ids
        assert other.texts == from_csv.texts
        assert other.image_paths == from_csv.image_paths
        assert other.extra == from_csv.extra


def test_jsonl_integer_ids_and_unicode_line_separators(shop: Path) -> None:
    (shop / "cat.jsonl").write_text('{"item_id": 7, "text": "seven\u2028eight", "image": null}\r\n')
    catalog, _ = load_catalog(shop / "cat.jsonl")
    assert catalog.item_ids == ["7"] and catalog.texts == ["seven\u2028eight"]


def test_missing_column(shop: Path) -> None:
    path = _write_csv(shop / "cat.csv", [["item_id", "text"], ["a", "x"]])
    with pytest.raises(DataError, match="'image'") as info:
        load_catalog(path, skip_bad=True)  # a broken header is fatal even with skip_bad
    assert str(path) in str(info.value) and info.value.row == 1


# (rows after the header, expected line, expected reason, skipped); images are under img/
BAD_CSV_CASES = {
    "duplicate id": ([["a", "x", ""], ["b", "y", ""], ["a", "z", ""]], 4, "duplicate item_id", "row"),
    "empty id": ([["a", "x", ""], ["  ", "y", "img/b.png"]], 3, "no item_id", "row"),
    "empty row": ([["a", "x", ""], ["", "", ""]], 3, "no item_id", "row"),
    "missing image": ([["a", "x", "img/nope.png"], ["b", "y", ""]], 2, "image file not found", "image"),
    "corrupt image": ([["b", "y", ""], ["a", "x", "img/garbage.png"]], 3, "corrupt", "image"),
    "field count": ([["a", "x", "", "extra"], ["b", "y", ""]], 2, "has 4 fields", "row"),
}


@pytest.mark.parametrize("case", list(BAD_CSV_CASES))
def test_bad_csv_rows(shop: Path, case: str) -> None:
    (shop / "img" / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png at all")
    rows, line, reason, skipped = BAD_CSV_CASES[case]
    path = _write_csv(shop / "cat.csv", [["item_id", "text", "image"], *rows])
    with pytest.raises(DataError) as info:
        load_catalog(path)
    message = str(info.value)
    assert str(path) in message and f"line {line}" in message and reason in message
    assert info.value.row == line

    catalog, problems = load_catalog(path, skip_bad=True)
    assert len(problems) == 1
    assert problems[0].row == line and reason in problems[0].reason and problems[0].skipped == skipped
    if skipped == "row":
        assert catalog.n_items == len(rows) - 1
    else:  # the item stays, its image becomes missing
        assert catalog.n_items == len(rows)
        assert catalog.image_paths[catalog.index[problems[0].item_id]] is None


def test_malformed_jsonl(shop: Path) -> None:
    path = shop / "cat.jsonl"
    path.write_text('{"item_id": "a", "text": "x"}\n{"item_id": "b", "text": \n'
                    '["not", "an", "object"]\n{"item_id": "c", "text": 5}\n{"text": "no id"}\n'
                    '{"item_id": "d", "image": "img/a.png"}\n')
    with pytest.raises(DataError) as info:
        load_catalog(path)
    message = str(info.value)
    assert str(path) in message and "4 bad row(s)" in message
    for expected in ("line 2: malformed JSON", "line 3: expected a JSON object", "line 4 (item 'c'): field 'text'",
                     "line 5: no item_id"):
        assert expected in message
    catalog, problems = load_catalog(path, skip_bad=True)
    assert catalog.item_ids == ["a", "d"]
    assert [p.row for p in problems] == [2, 3, 4, 5]
    assert all(isinstance(p, Problem) and p.skipped == "row" for p in problems)


def test_decompression_bomb_is_a_problem(shop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the 24x16 test images now count as bombs
    path = _write_csv(shop / "cat.csv", [["item_id", "text", "image"], ["a", "x", "img/a.png"]])
    _, problems = load_catalog(path, skip_bad=True)
    assert len(problems) == 1 and "decompression bomb" in problems[0].reason


def test_many_problems_are_summarised(shop: Path) -> None:
    rows = [["item_id", "text", "image"]] + [["", "x", ""]] * 15 + [["ok", "y", ""]]
    with pytest.raises(DataError, match=r"15 bad row\(s\)(.|\n)*and 5 more"):
        load_catalog(_write_csv(shop / "cat.csv", rows))


def test_unknown_format_and_empty_file(shop: Path) -> None:
    (shop / "cat.xml").write_text("<items/>")
    with pytest.raises(DataError, match="unknown catalog format"):
        load_catalog(shop / "cat.xml")
    (shop / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty file"):
        load_catalog(shop / "empty.csv")
    with pytest.raises(DataError, match="no valid items"):
        load_catalog(_write_csv(shop / "cat.csv", [["item_id", "text", "image"], ["", "x", ""]]), skip_bad=True)


def test_interactions(shop: Path) -> None:
    catalog, _ = load_catalog(_write_csv(shop / "cat.csv", GOOD_ROWS))
    path = _write_csv(shop / "log.tsv", [["user_id", "item_id", "rating", "timestamp"],
                                         ["u1", "a", "5", "100"], ["u2", "c", "3", "200.5"]], delimiter="\t")
    inter, dropped = catalog_interactions(path, catalog, skip_bad=False, seed=0)
    users, items = _pairs(inter, catalog)
    assert users == ["u1", "u2"] and items == ["a", "c"] and dropped == 0
    np.testing.assert_array_equal(load_interactions(path).timestamps, [100.0, 200.5])

    path = _write_csv(shop / "log.csv", [["user_id", "item_id"], ["u1", "a"], ["u1", "zz"]])
    with pytest.raises(DataError) as info:
        catalog_interactions(path, catalog, skip_bad=False, seed=0)
    assert str(path) in str(info.value) and "row 3: item id 'zz' is not in the given item list" in str(info.value)

    no_time = _write_csv(shop / "log2.csv", [["user_id", "item_id"], ["u1", "b"]])
    assert _pairs(catalog_interactions(no_time, catalog, skip_bad=False, seed=0)[0], catalog) == (["u1"], ["b"])
    assert load_interactions(no_time).timestamps is None

    bad_time = _write_csv(shop / "log3.csv", [["user_id", "item_id", "timestamp"], ["u1", "b", "soon"]])
    with pytest.raises(DataError, match="row 2.*timestamp is neither a number"):
        catalog_interactions(bad_time, catalog, skip_bad=False, seed=0)

    with pytest.raises(DataError, match="missing column.*user_id"):
        catalog_interactions(_write_csv(shop / "log4.csv", [["user", "item_id"], ["u1", "b"]]), catalog,
                             skip_bad=False, seed=0)


def _pairs(inter, catalog: Catalog) -> tuple[list[str], list[str]]:
    """(user ids, item ids) of every interaction of ``inter`` (all splits), in user order."""
    pairs = np.concatenate([inter.train, inter.valid, inter.test])
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    return [inter.user_ids[u] for u in pairs[:, 0]], [catalog.item_ids[i] for i in pairs[:, 1]]


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_image_paths_outside_the_catalog_folder_are_refused(tmp_path: Path, how: str) -> None:
    secret = _png(tmp_path / "private" / "secret.png", (9, 9, 9))
    shop = tmp_path / "shop"
    _png(shop / "img" / "a.png", (255, 0, 0))
    if how == "symlink":  # a link inside the folder to a file outside it: followed, then refused
        (shop / "img" / "link.png").symlink_to(secret)
    ref = {"dotdot": "../private/secret.png", "absolute": str(secret), "symlink": "img/link.png"}[how]
    path = _write_csv(shop / "cat.csv", [["item_id", "text", "image"], ["a", "x", "img/a.png"], ["b", "y", ref]])
    with pytest.raises(DataError) as info:
        load_catalog(path)
    message = str(info.value)
    assert message.count("\n") == 1 and "line 3 (item 'b')" in message and "outside the catalog's folder" in message
    assert info.value.row == 3

    catalog, problems = load_catalog(path, skip_bad=True)
    assert [(p.row, p.item_id, p.skipped) for p in problems] == [(3, "b", "image")]
    assert catalog.item_ids == ["a", "b"] and catalog.image_paths[1] is None
    assert catalog.image_paths[0] == (shop / "img" / "a.png").resolve()


def test_a_link_to_a_file_inside_the_folder_is_kept(shop: Path) -> None:
    (shop / "img" / "alias.png").symlink_to(shop / "img" / "a.png")
    path = _write_csv(shop / "cat.csv", [["item_id", "text", "image"], ["a", "x", "img/alias.png"]])
    catalog, problems = load_catalog(path)
    assert problems == [] and catalog.image_paths == [(shop / "img" / "a.png").resolve()]
