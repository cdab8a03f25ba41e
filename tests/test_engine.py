"""Index building, completion and the search engine on a tiny generated shop (dgmrec-tiny encoder)."""
from __future__ import annotations

import csv
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from conftest import make_toy_dataset
from test_indexes import to_format_1
from dgmrec_core.checkpoint import load_model
from dgmrec_core.config import DGMRecConfig
from dgmrec_core.errors import DataError
from dgmrec_core.trainer import fit
from retrieval.build.completion import complete_features, complete_new_items
from retrieval.build.ingest import add_items
from retrieval.encode.clip import ClipEncoder, sha256_file
from retrieval.search.engine import Hit, QueryError, SearchEngine
from retrieval.index.storage import IndexMismatch
from retrieval.build.holdout import choose_holdout
from retrieval.build.options import BuildOptions
from retrieval.build.pipeline import build_index

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (210, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 210), "yellow": (230, 200, 20),
           "purple": (130, 40, 170)}
CONFIG = DGMRecConfig(embedding_size=16, epochs=3, knn_k=5, batch_size=256, patience=50)
CONFIG_FLAGS = ["--embedding-size", "16", "--epochs", "3", "--knn-k", "5", "--batch-size", "256",
                "--patience", "50"]
HEADER = ["item_id", "text", "image", "title", "colour"]


def _draw(shape: str, rgb: tuple[int, int, int], mark: int = 0, size: int = 48) -> Image.Image:
    img = Image.new("RGB", (size, size), (245, 245, 245))
    d = ImageDraw.Draw(img)
    if shape == "circle":
        d.ellipse((8, 8, size - 8, size - 8), fill=rgb)
    elif shape == "square":
        d.rectangle((8, 8, size - 8, size - 8), fill=rgb)
    elif shape == "triangle":
        d.polygon([(size // 2, 6), (size - 6, size - 6), (6, size - 6)], fill=rgb)
    else:
        d.rectangle((size // 2 - 5, 6, size // 2 + 5, size - 6), fill=rgb)
        d.rectangle((6, size // 2 - 5, size - 6, size // 2 + 5), fill=rgb)
    d.point([(mark % size, mark // size % 4)], fill=(0, 0, 0))  # makes every image distinct
    return img


def _write_catalog(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path


def _item_row(folder: Path, item: str, n: int, shape: str, colour: str, *, image: bool, text: bool) -> list[str]:
    ref = ""
    if image:
        ref = f"images/{item}.png"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        _draw(shape, COLOURS[colour], mark=n).save(folder / ref)
    words = f"a {colour} {shape} sticker number {n}" if text else ""
    return [item, words, ref, f"{colour.title()} {shape}", colour]


def make_shop(folder: Path, n_items: int = 60, n_users: int = 20, seed: int = 0) -> tuple[Path, Path]:
    """catalog.csv + images + interactions.csv; 9 items lack an image, 9 a text, 2 of them both."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [f"p{i:03d}" for i in range(n_items)]
    order = rng.permutation(n_items)
    no_image, no_text = set(order[:9]), set(order[7:16])
    rows = [_item_row(folder, ids[i], i, SHAPES[i % 4], list(COLOURS)[i % 3],
                      image=i not in no_image, text=i not in no_text) for i in range(n_items)]
    catalog = _write_catalog(folder / "catalog.csv", rows)
    with open(folder / "interactions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "item_id", "timestamp"])
        for u in range(n_users):
            liked = [i for i in rng.permutation(n_items) if i % 3 == u % 3][:10 + u % 5]  # one colour each
            writer.writerows([f"u{u:02d}", ids[i], t] for t, i in enumerate(liked))
    return catalog, folder / "interactions.csv"


@dataclass
class Built:
    root: Path
    catalog: Path
    interactions: Path
    index: Path
    work: Path
    encoder: ClipEncoder
    engine: SearchEngine


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("engine")
    catalog, interactions = make_shop(root / "shop")
    encoder = ClipEncoder("dgmrec-tiny", pretrained=None, seed=0, device="cpu")
    index, work = root / "indexes" / "shop", root / "work"
    build_index(catalog, interactions, index, BuildOptions(config=CONFIG, work_dir=work, holdout=0.1, progress=False),
                encoder=encoder)
    return Built(root, catalog, interactions, index, work, encoder, SearchEngine.load(index, encoder=encoder))


def _copy_bundle(built: Built, name: str) -> Path:
    """A private copy of the shared bundle at the same depth (image paths are relative to it)."""
    target = built.index.with_name(name)
    shutil.copytree(built.index, target)
    return target


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------- build and bundle
def test_bundle_records_items_users_flags_and_holdout(built: Built) -> None:
    engine, rows = built.engine, _rows(built.catalog)
    meta, extra = engine.bundle.meta, engine.bundle.meta["extra"]
    assert engine.bundle.item_ids == [r["item_id"] for r in rows]
    for m in ("image", "text"):  # generated exactly where the catalog lacks the modality
        np.testing.assert_array_equal(engine.bundle.generated[m], [r[m] == "" for r in rows])
    assert sorted(engine.users()) == [f"u{u:02d}" for u in range(20)]
    assert (built.index / "model.pt").is_file() and meta["model_fingerprint"]
    assert meta["encoder_fingerprint"]["model"] == "dgmrec-tiny"
    assert len(extra["history"]) == CONFIG.epochs and "valid" in extra["history"][-1]  # the last epoch is validated
    held = extra["heldout"]["items"]
    assert len(held) == 4 and {h["modality"] for h in held} == {"image", "text"}
    for h in held:  # held-out items observe both modalities; their index entries are the real ones
        row = rows[h["row"]]
        assert row["item_id"] == h["item_id"] and row["image"] and row["text"]
        assert not engine.bundle.generated[h["modality"]][h["row"]]
        assert -1 <= h["cosine"] <= 1 and 1 <= h["rank"] <= 60
        assert engine.bundle.extra_array(f"heldout_generated_{h['modality']}").shape[1] == 64
    assert set(engine.info.report.heldout["summary"]) == {"image", "text"}
    item = engine.item("p001")
    assert item.title == rows[1]["title"] and item.extra == {"colour": rows[1]["colour"]}
    assert item.image is None or Path(item.image).is_file()


def test_choose_holdout_alternates_modalities_and_is_seeded() -> None:
    observed = {"image": np.array([1, 1, 0, 1, 1, 1], bool), "text": np.array([1, 0, 1, 1, 1, 1], bool)}
    held = choose_holdout(observed, 0.5, seed=3)
    assert len(held.rows) == 2 and held.modality == ["image", "text"]
    assert set(held.rows) <= {0, 3, 4, 5}
    again = choose_holdout(observed, 0.5, seed=3)
    np.testing.assert_array_equal(held.rows, again.rows)
    assert len(choose_holdout(observed, 0.0, seed=3).rows) == 0
    with pytest.raises(DataError):
        choose_holdout(observed, 1.5, seed=3)


def test_skip_bad_drops_rows_and_lists_them(built: Built, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = _rows(built.catalog)
    shop = built.catalog.parent
    _truncated_jpeg(shop / "images" / "cut.jpg")
    bad = [[r[k] for k in HEADER] for r in rows] + [[rows[0]["item_id"], "duplicate", "", "", ""],
                                                     ["p900", "a broken picture", "images/none.png", "", ""],
                                                     ["p901", "a cut picture", "images/cut.jpg", "", ""]]
    catalog = _write_catalog(shop / "bad_catalog.csv", bad)
    interactions = tmp_path / "inter.csv"
    shutil.copy(built.interactions, interactions)
    with open(interactions, "a") as f:
        f.write("u00,unknown-item,99\n")
    with pytest.raises(DataError, match="bad row"):
        build_index(catalog, interactions, tmp_path / "idx", BuildOptions(config=CONFIG, work_dir=tmp_path / "work",
                                                                         progress=False), encoder=built.encoder)
    caplog.set_level(logging.INFO, logger="dgmrec")
    options = BuildOptions(config=CONFIG, work_dir=tmp_path / "work", skip_bad=True, holdout=0.0, progress=False)
    out = build_index(catalog, interactions, tmp_path / "idx", options, encoder=built.encoder)
    printed = caplog.text
    assert "duplicate item_id" in printed and "image dropped, item kept" in printed
    assert "1 interaction(s) of items not in the catalog" in printed
    assert f"line {len(rows) + 4} (item 'p901'): image unreadable or corrupt" in printed and "truncated" in printed
    engine = SearchEngine.load(out, encoder=built.encoder)
    assert len(engine.bundle) == 62 and engine.item("p900").generated == {"image": True, "text": False}
    assert engine.item("p901").generated == {"image": True, "text": False} and engine.item("p901").image is None
    assert len(engine.bundle.meta["extra"]["skipped"]) == 3


def _truncated_jpeg(path: Path) -> Path:
    """A JPEG cut in the middle: Image.verify() passes it, decoding it fails."""
    import io

    data = io.BytesIO()
    _draw("circle", COLOURS["red"], size=96).save(data, format="JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.getvalue()[:len(data.getvalue()) * 2 // 3])
    with Image.open(path) as img:
        img.verify()
    return path


def test_add_items_skip_bad_lists_and_records_undecodable_images(built: Built, capsys: pytest.CaptureFixture) -> None:
    from ui.cli import main

    folder = _copy_bundle(built, "added-skip")
    shop = built.catalog.parent
    _truncated_jpeg(shop / "images" / "cut2.jpg")
    rows = [_item_row(shop, "s1", 201, "circle", "red", image=True, text=True),
            ["s2", "a red cut sticker", "images/cut2.jpg", "Red cut", "red"]]
    catalog = _write_catalog(shop / "skip_items.csv", rows)
    assert main(["add-items", "--index", str(folder), "--catalog", str(catalog)]) == 2
    assert "line 3 (item 's2'): image unreadable or corrupt" in capsys.readouterr().err
    assert main(["add-items", "--index", str(folder), "--catalog", str(catalog), "--skip-bad"]) == 0
    printed = capsys.readouterr().out
    assert "skipped: 1 problem(s)" in printed and "line 3 (item 's2'): image unreadable or corrupt" in printed
    assert "added 2 item(s)" in printed
    engine = SearchEngine.load(folder, encoder=built.encoder)
    assert engine.item("s2").image is None and engine.item("s2").generated["image"]
    assert engine.bundle.meta["extra"]["skipped"][-1].startswith("skip_items.csv: line 3 (item 's2')")


# ---------------------------------------------------------------------------- completion
def test_completion_keeps_observed_rows_and_generates_the_rest() -> None:
    dataset = make_toy_dataset(n_users=20, n_items=30, dims=(8, 8))
    model = fit(dataset, DGMRecConfig(embedding_size=8, epochs=1, knn_k=3, batch_size=128), progress=False).model
    feats = {m.name: m.values for m in dataset.modalities}
    observed = {m.name: m.observed for m in dataset.modalities}
    done = complete_features(model, feats, observed)
    generated = model.generated_features(noise=False)
    for j, m in enumerate(dataset.modalities):
        np.testing.assert_array_equal(done.features[m.name][m.observed], m.values[m.observed])
        np.testing.assert_allclose(done.features[m.name][~m.observed], generated[j].numpy()[~m.observed])
        np.testing.assert_array_equal(done.generated[m.name], ~m.observed)

    new = {"image": np.ones((3, 8), np.float32), "text": None}
    obs = {"image": np.array([True, True, False]), "text": np.zeros(3, bool)}
    with pytest.raises(DataError, match="neither image nor text.*'c'"):
        complete_new_items(model, new, obs, item_ids=["a", "b", "c"])
    obs["image"][2] = True
    done = complete_new_items(model, new, obs)
    expected = model.query_to_modality(0, 1, torch.ones(3, 8)).numpy()
    np.testing.assert_allclose(done.features["text"], expected, rtol=1e-5)
    assert done.generated["text"].all() and not done.generated["image"].any()


# ---------------------------------------------------------------------------- search
@pytest.mark.parametrize("user", [None, "u04"])
@pytest.mark.parametrize("route", ["dgmrec", "direct", "fused"])
def test_search_all_directions_return_complete_hits(built: Built, user: str | None, route: str) -> None:
    engine = built.engine
    image = built.catalog.parent / "images" / "p001.png"
    results = {
        ("text", "image"): engine.search_text("a red circle", target="image", k=5, user=user, route=route),
        ("text", "text"): engine.search_text("a red circle", target="text", k=5, user=user, route=route),
        ("image", "text"): engine.search_image(image, target="text", k=5, user=user, route=route),
        ("image", "image"): engine.search_image(Image.open(image), target="image", k=5, user=user, route=route),
    }
    for (_, target), hits in results.items():
        assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
        assert len({h.item_id for h in hits}) == 5
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        for h in hits:
            assert isinstance(h, Hit) and isinstance(h.score, float)
            row = engine.bundle.row_of(h.item_id)
            assert h.generated == bool(engine.bundle.generated[target][row])
            item = engine.item(h.item_id)
            assert (h.text, h.image, h.title) == (item.text, item.image, item.title)
            assert h.image is None or Path(h.image).is_file()
            json.dumps(h.to_dict())


def test_same_modality_search_finds_the_item_itself(built: Built) -> None:
    engine, rows = built.engine, _rows(built.catalog)
    with_text = next(r for r in rows if r["text"])
    assert engine.search_text(with_text["text"], target="text", k=1)[0].item_id == with_text["item_id"]
    with_image = next(r for r in rows if r["image"])
    hit = engine.search_image(built.catalog.parent / with_image["image"], target="image", k=1)[0]
    assert hit.item_id == with_image["item_id"] and hit.score == pytest.approx(1.0, abs=1e-4)
    assert not hit.generated


def test_personalised_route_depends_on_the_user(built: Built) -> None:
    engine = built.engine
    x = engine.encoder.encode_texts(["a blue square"])
    plain = engine.query_vector("text", x, "image", route="dgmrec")
    users = [engine.query_vector("text", x, "image", user=u, route="dgmrec") for u in ("u00", "u01")]
    assert plain.shape == (1, 64)
    assert not np.allclose(users[0], users[1]) and not np.allclose(users[0], plain)


def test_reloaded_index_gives_identical_results(built: Built) -> None:
    again = SearchEngine.load(built.index)  # encoder rebuilt from the stored spec
    for engine in (built.engine, again):
        assert engine.encoder.fingerprint() == built.encoder.fingerprint()
    for call in (lambda e: e.search_text("green triangle", k=7),
                 lambda e: e.search_text("green triangle", target="text", k=7, user="u02"),
                 lambda e: e.search_image(built.catalog.parent / "images" / "p002.png", k=7, route="fused"),
                 lambda e: e.recommend("u05", k=7)):
        assert call(built.engine) == call(again)


def test_recommend_ranks_by_dot_product_without_training_items(built: Built) -> None:
    engine = built.engine
    model, _ = load_model(built.index / "model.pt")
    users, items = (t.numpy() for t in model.final_embeddings())
    for user in ("u00", "u07", "u13"):
        hits = engine.recommend(user, k=10)
        seen = {i.item_id for i in engine.history(user)}
        assert seen and not seen & {h.item_id for h in hits}
        u = engine.users().index(user)
        scores = items @ users[u]
        ranked = [engine.bundle.item_ids[i] for i in np.argsort(-scores, kind="stable")
                  if engine.bundle.item_ids[i] not in seen][:10]
        assert [h.item_id for h in hits] == ranked
        np.testing.assert_allclose([h.score for h in hits], np.sort(scores[[engine.bundle.row_of(i) for i in ranked]])[::-1],
                                   rtol=1e-3, atol=1e-5)


def test_bad_queries_raise_query_error(built: Built, tmp_path: Path) -> None:
    engine = built.engine
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    bad = [lambda: engine.search_text(""), lambda: engine.search_text("   "),
           lambda: engine.search_text("red", user="nobody"), lambda: engine.recommend("nobody"),
           lambda: engine.history("nobody"), lambda: engine.search_image(not_image),
           lambda: engine.search_image(tmp_path / "missing.png"), lambda: engine.search_image(b"not an image"),
           lambda: engine.search_text("red", target="audio"), lambda: engine.search_text("red", route="magic"),
           lambda: engine.search_text("red", k=0), lambda: engine.item("nope")]
    for call in bad:
        with pytest.raises(QueryError):
            call()
    with pytest.raises(QueryError, match="unknown user id 'nobody'"):
        engine.recommend("nobody")


# ---------------------------------------------------------------------------- refusals
def test_model_from_other_data_is_refused(built: Built, tmp_path: Path) -> None:
    other = make_toy_dataset(n_users=10, n_items=30, dims=(64, 64))
    fit(other, DGMRecConfig(embedding_size=16, epochs=1, knn_k=3), checkpoint=tmp_path / "other.pt", progress=False)
    with pytest.raises(IndexMismatch, match="not the one this index was built with"):
        SearchEngine.load(built.index, encoder=built.encoder, model_path=tmp_path / "other.pt")
    folder = _copy_bundle(built, "swapped-model")
    shutil.copy(tmp_path / "other.pt", folder / "model.pt")
    with pytest.raises(IndexMismatch):
        SearchEngine.load(folder, encoder=built.encoder)


def test_hostile_model_in_an_index_runs_nothing(built: Built, tmp_path: Path) -> None:
    from test_safety import hostile_checkpoint

    marker = tmp_path / "ran"
    folder = _copy_bundle(built, "hostile-model")
    hostile_checkpoint(folder / "model.pt", marker)
    with pytest.raises(IndexMismatch, match="model.pt has .* bytes but meta.json records"):
        SearchEngine.load(folder, encoder=built.encoder)
    meta = json.loads((folder / "meta.json").read_text())
    meta["checksums"]["model.pt"]["size"] = (folder / "model.pt").stat().st_size
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(IndexMismatch, match="sha256 differs"):  # refused before the file is read
        SearchEngine.load(folder, encoder=built.encoder)
    meta["model_fingerprint"] = sha256_file(folder / "model.pt")  # the hash matches too: weights_only refuses it
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="not a readable checkpoint"):
        SearchEngine.load(folder, encoder=built.encoder)
    assert not marker.exists()


def test_other_encoder_is_refused(built: Built) -> None:
    other = ClipEncoder("dgmrec-tiny", pretrained=None, seed=1, device="cpu")
    with pytest.raises(IndexMismatch, match="encoder"):
        SearchEngine.load(built.index, encoder=other)


# ---------------------------------------------------------------------------- add items
def test_add_items_generates_missing_modalities_and_persists(built: Built) -> None:
    folder = _copy_bundle(built, "added")
    engine = SearchEngine.load(folder, encoder=built.encoder)
    shop = built.catalog.parent
    rows = [_item_row(shop, "n1", 101, "circle", "yellow", image=True, text=True),
            _item_row(shop, "n2", 102, "square", "purple", image=True, text=False),
            _item_row(shop, "n3", 103, "cross", "purple", image=False, text=True)]
    catalog = _write_catalog(shop / "new_items.csv", rows)
    before = engine.search_text("a purple cross sticker number 103", target="text", k=3)

    assert add_items(engine, catalog) == ["n1", "n2", "n3"]
    assert engine.item("n2").generated == {"image": False, "text": True}
    assert engine.item("n3").generated == {"image": True, "text": False}
    assert engine.item("n3").title == "Purple cross"
    hit = engine.search_text("a purple cross sticker number 103", target="text", k=1)[0]
    assert hit.item_id == "n3" and not hit.generated
    hit = engine.search_image(shop / "images" / "n2.png", target="image", k=1)[0]
    assert hit.item_id == "n2" and hit.image == str((shop / "images" / "n2.png").resolve())
    generated_text = engine.bundle.features("text")[engine.bundle.row_of("n2")]
    assert np.abs(generated_text).sum() > 0
    assert any(h.item_id in {"n1", "n2", "n3"} for h in engine.search_image(
        shop / "images" / "n2.png", target="text", k=len(engine.bundle)))
    assert len(engine.recommend("u00", k=len(engine.bundle))) == len(engine.bundle) - len(engine.history("u00"))

    reloaded = SearchEngine.load(folder, encoder=built.encoder)
    assert len(reloaded.bundle) == 63 and reloaded.item("n3") == engine.item("n3")
    assert before != reloaded.search_text("a purple cross sticker number 103", target="text", k=3)

    empty = _write_catalog(shop / "empty_item.csv", [["n4", "", "", "Nothing", ""]])
    with pytest.raises(DataError, match="neither image nor text"):
        add_items(reloaded, empty)
    with pytest.raises(DataError, match="already in the index"):
        add_items(reloaded, catalog)
    assert len(SearchEngine.load(folder, encoder=built.encoder).bundle) == 63


def test_a_bundle_written_before_item_files_loads_and_its_next_add_items_migrates_it(built: Built) -> None:
    folder = _copy_bundle(built, "before-item-files")
    meta = json.loads((folder / "meta.json").read_text())  # the way bundles were written: items inside extra
    columns = {}
    for name in meta.pop("item_files"):
        for column, values in json.loads((folder / name).read_text())["columns"].items():
            columns.setdefault(column, []).extend(values)
        (folder / name).unlink()
        meta["checksums"].pop(name)
    del meta["item_columns"]
    meta["extra"]["items"] = columns
    (folder / "meta.json").write_text(json.dumps(meta))
    to_format_1(folder)  # and before segments: item ids and generated flags inside meta.json

    engine = SearchEngine.load(folder, encoder=built.encoder)
    assert not engine.bundle.has_item_files and engine.bundle.meta["format_version"] == 1
    ids = built.engine.bundle.item_ids
    assert [engine.item(i) for i in engine.bundle.item_ids] == [built.engine.item(i) for i in ids]
    shop = built.catalog.parent
    catalog = _write_catalog(shop / "migrating_items.csv",
                             [_item_row(shop, "m1", 111, "circle", "yellow", image=True, text=True)])
    assert add_items(engine, catalog) == ["m1"]
    reloaded = SearchEngine.load(folder, encoder=built.encoder)
    assert reloaded.bundle.meta["item_files"] == ["items-000000.json", "items-000001.json"]
    assert "items" not in reloaded.bundle.meta["extra"] and reloaded.bundle.meta["format_version"] == 2
    assert reloaded.bundle.segments == [len(ids), 1] and reloaded.bundle.item_ids == [*ids, "m1"]
    assert reloaded.item("p001") == built.engine.item("p001") and reloaded.item("m1") == engine.item("m1")


# ---------------------------------------------------------------------------- command line
def test_cli_build_search_recommend(built: Built, capsys: pytest.CaptureFixture,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import ui.cli

    monkeypatch.setattr(ui.cli, "COMMAND_MODULES", ("ui.cli_train", "ui.cli_index"))  # others may be unfinished
    out = built.root / "indexes" / "cli"
    code = ui.cli.main(["build", str(built.catalog), str(built.interactions), "--out", str(out),
                        "--work-dir", str(built.work), "--model-name", "dgmrec-tiny", "--pretrained", "none",
                        "--holdout", "0.1", *CONFIG_FLAGS])
    printed = capsys.readouterr().out
    assert code == 0 and "reusing" in printed  # same data + config: the fixture's model is reused
    assert (out / "model.pt").is_file()

    assert ui.cli.main(["search", "--index", str(out), "--text", "a red circle", "--k", "4", "--json",
                        "--user", "u01"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["target"] == "image" and len(result["hits"]) == 4
    assert set(result["hits"][0]) == {"item_id", "score", "rank", "text", "image", "generated", "title", "extra"}
    assert result["hits"] == [h.to_dict() for h in built.engine.search_text("a red circle", k=4, user="u01")]

    image = built.catalog.parent / "images" / "p001.png"
    assert ui.cli.main(["search", "--index", str(out), "--image", str(image), "--k", "2"]) == 0
    assert capsys.readouterr().out.count("\n") >= 2
    assert ui.cli.main(["recommend", "--index", str(out), "--user", "u03", "--k", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 3

    for argv in (["search", "--index", str(out), "--text", " "],
                 ["recommend", "--index", str(out), "--user", "ghost"],
                 ["search", "--index", str(built.root / "nowhere"), "--text", "red"],
                 ["build", str(built.root / "missing.csv"), str(built.interactions), "--out", str(out)]):
        assert ui.cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1


# ---------------------------------------------------------------------------- held-out test, auto route
def test_build_stores_the_heldout_route_report_and_auto_follows_it(built: Built) -> None:
    engine = built.engine
    report = engine.bundle.meta["extra"]["heldout_eval"]
    pairs = {(p["src"], p["dst"]): p for p in report["pairs"]}
    assert set(pairs) == {("text", "image"), ("image", "text")}
    for (src, dst), p in pairs.items():
        assert p["n"] == 2 and p["n_candidates"] >= 40
        assert set(p["generation"]) == {"dgmrec", "nn", "ridge", "mean", "direct"}  # tiny CLIP: aligned spaces
        assert set(p["routes"]) == {"dgmrec", "direct", "fused"}
        for scores in (*p["generation"].values(), *p["routes"].values()):
            assert 0 <= scores["hit@10"] <= 1 and scores["median_rank"] >= 1
        assert engine.resolve_route(src, dst, "auto") == p["auto"]
        assert engine.resolve_route(src, dst, "direct") == "direct"
    x = engine.encoder.encode_texts(["a red circle"])
    taken = engine.resolve_route("text", "image", "auto")
    np.testing.assert_array_equal(engine.query_vector("text", x, "image", route="auto"),
                                  engine.query_vector("text", x, "image", route=taken))


def test_auto_route_follows_a_changed_report(built: Built) -> None:
    engine = built.engine
    report = engine.info.report
    saved = report.routes
    try:
        report.routes = {**saved, "pairs": [{**pair, "auto": "fused"} for pair in saved["pairs"]]}
        assert engine.resolve_route("text", "image") == "fused"
        report.routes = {"pairs": [], "warnings": []}
        assert engine.resolve_route("text", "image") == "dgmrec"  # nothing measured: DGMRec's own route
    finally:
        report.routes = saved


def test_personalised_search_reorders_within_the_query_matches(built: Built) -> None:
    engine = built.engine
    anonymous = engine.search_text("a blue square", k=30)
    for user in ("u00", "u01", "u02"):
        mine = engine.search_text("a blue square", k=10, user=user)
        assert {h.item_id for h in mine} <= {h.item_id for h in anonymous}
        assert [h.score for h in mine] == sorted((h.score for h in mine), reverse=True)
    ranked = [[h.item_id for h in engine.search_text("a blue square", k=10, user=u)] for u in ("u00", "u01")]
    assert ranked[0] != ranked[1]


def test_personalised_scores_move_items_by_a_bounded_amount() -> None:
    from retrieval.search.engine import personalised_scores

    query = np.array([0.9, 0.8, 0.7, 0.1])
    combined = personalised_scores(query, np.array([0.0, 0.0, 5.0, 10.0]), weight=0.5)
    assert np.argsort(-combined)[0] == 3 or combined[3] <= query[3] + 0.5 * 0.8 + 1e-6
    np.testing.assert_allclose(combined - query, [0, 0, 0.2, 0.4], atol=1e-6)
    np.testing.assert_allclose(personalised_scores(query, np.ones(4)), query, atol=1e-6)


@pytest.mark.parametrize("route", ["auto", "dgmrec", "direct", "fused"])
def test_real_and_generated_entries_are_ranked_together_by_score(built: Built, route: str) -> None:
    engine = built.engine
    for hits in (engine.search_text("a red circle", target="image", k=60, route=route),
                 engine.search_image(built.catalog.parent / "images" / "p001.png", target="text", k=60, route=route)):
        kinds = [h.generated for h in hits]
        assert any(kinds) and not all(kinds)  # both kinds compete in one ranking
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
