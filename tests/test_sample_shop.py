"""The sample shop: deterministic, cached, realistic missing shares, readable images, users with taste."""
from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dgmrec_core.errors import DataError
from retrieval.demo.sample_shop import SHARE_NEITHER, SHARE_NO_IMAGE, SHARE_NO_TEXT, make_sample_shop

ARGS = {"n_items": 600, "n_users": 200, "seed": 3, "image_size": 64}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample_shop(tmp_path_factory.mktemp("a") / "shop", **ARGS)


def test_same_seed_same_bytes_other_seed_other_shop(shop: Path, tmp_path: Path) -> None:
    again = make_sample_shop(tmp_path / "again", **ARGS)
    for name in ("catalog.csv", "interactions.csv", "users.csv", "attributes.json"):
        assert (shop / name).read_bytes() == (again / name).read_bytes(), name
    images = sorted(p.name for p in (shop / "images").iterdir())
    assert images == sorted(p.name for p in (again / "images").iterdir())
    for name in images[:: max(1, len(images) // 5)]:
        assert (shop / "images" / name).read_bytes() == (again / "images" / name).read_bytes()
    other = make_sample_shop(tmp_path / "other", **{**ARGS, "seed": 4, "n_users": 20})
    assert (other / "catalog.csv").read_bytes() != (shop / "catalog.csv").read_bytes()


def test_second_call_reuses_and_other_args_rebuild(tmp_path: Path) -> None:
    args = {"n_items": 40, "n_users": 10, "seed": 1, "image_size": 32}
    out = make_sample_shop(tmp_path / "s", **args)
    stamp = (out / "catalog.csv").stat().st_mtime_ns
    assert make_sample_shop(tmp_path / "s", **args) == out
    assert (out / "catalog.csv").stat().st_mtime_ns == stamp
    make_sample_shop(tmp_path / "s", **{**args, "n_items": 50})
    assert len(_rows(out / "catalog.csv")) == 50
    assert json.loads((out / "manifest.json").read_text())["args"]["n_items"] == 50
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temp folders left behind


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a sample shop"):
        make_sample_shop(tmp_path / "mine", n_items=10, n_users=5)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_catalog_columns_and_missing_shares(shop: Path) -> None:
    rows = _rows(shop / "catalog.csv")
    assert list(rows[0]) == ["item_id", "text", "image", "title", "category", "colour", "pattern"]
    assert len(rows) == ARGS["n_items"] and len({r["item_id"] for r in rows}) == len(rows)
    kinds = Counter((bool(r["text"]), bool(r["image"])) for r in rows)
    n = len(rows)
    assert abs(kinds[(True, False)] / n - SHARE_NO_IMAGE) < 0.05
    assert abs(kinds[(False, True)] / n - SHARE_NO_TEXT) < 0.05
    assert abs(kinds[(False, False)] / n - SHARE_NEITHER) < 0.04
    attributes = json.loads((shop / "attributes.json").read_text())
    assert len(attributes["category"]) >= 8 and len(attributes["colour"]) >= 8 and len(attributes["pattern"]) >= 3
    for r in rows:
        assert r["category"] in attributes["category"] and r["colour"] in attributes["colour"]
        if r["text"]:
            assert r["colour"] in r["text"].lower() and r["category"] in r["text"].lower()
    texts = [r["text"] for r in rows if r["text"]]
    assert len(set(texts)) > 0.8 * len(texts)  # varied templates and fillers, not one sentence


def test_every_image_opens_and_only_listed_images_exist(shop: Path) -> None:
    rows = _rows(shop / "catalog.csv")
    listed = {r["image"] for r in rows if r["image"]}
    assert {f"images/{p.name}" for p in (shop / "images").iterdir()} == listed
    pixels = []
    for rel in sorted(listed):
        with Image.open(shop / rel) as img:
            img.load()
            assert img.size == (ARGS["image_size"],) * 2 and img.mode == "RGB"
            pixels.append(np.asarray(img))
    assert len({p.tobytes() for p in pixels}) == len(pixels)  # jitter: no two images alike


def test_interactions_follow_user_tastes(shop: Path) -> None:
    items = {r["item_id"]: r for r in _rows(shop / "catalog.csv")}
    users = {r["user_id"]: r for r in _rows(shop / "users.csv")}
    per_user: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for r in _rows(shop / "interactions.csv"):
        per_user[r["user_id"]].append((int(r["timestamp"]), r["item_id"]))
    assert set(per_user) == set(users)
    matched = expected = 0.0
    category_share = Counter(r["category"] for r in items.values())
    for user, events in per_user.items():
        assert 20 <= len(events) <= 60
        stamps = [t for t, _ in events]
        assert stamps == sorted(stamps)
        liked = set(users[user]["categories"].split("|"))
        matched += sum(items[i]["category"] in liked for _, i in events)
        expected += len(events) * sum(category_share[c] for c in liked) / len(items)
    assert matched > 3 * expected  # far above what random picks would give
