"""Catalogs without interactions: content-only training, a search-only index, refusals that say why."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dgmrec_core.config import DGMRecConfig
from dgmrec_core.content_training import fit_content, item_batch_size
from dgmrec_core.data import Dataset, Interactions, Modality
from dgmrec_core.errors import DataError
from dgmrec_core.heldout import heldout_report
from retrieval.encode.clip import ClipEncoder
from retrieval.search.engine import QueryError, SearchEngine
from retrieval.build.options import BuildOptions
from retrieval.build.pipeline import build_index
from test_engine import CONFIG, make_shop
from ui.cli import main


def _paired_dataset(n: int = 120, seed: int = 0) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """Items whose text feature is a fixed linear map of their image feature; 15 % miss their text."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(n, 16)).astype(np.float32)
    text = (image @ rng.normal(size=(16, 12)) / 4).astype(np.float32)
    has_text = np.ones(n, dtype=bool)
    has_text[rng.permutation(n)[: n * 15 // 100]] = False
    empty = np.zeros((0, 2), dtype=np.int64)
    inter = Interactions(0, n, empty, empty, empty, [], [str(i) for i in range(n)])
    mods = [Modality("image", image, np.ones(n, dtype=bool)),
            Modality("text", np.where(has_text[:, None], text, 0).astype(np.float32), has_text)]
    return Dataset(inter, mods, name="paired"), text, has_text


@pytest.mark.parametrize("gen_training", ["joint", "after"])  # no users: the chain trains either way
def test_content_training_learns_generation_without_users(gen_training: str) -> None:
    dataset, text, has_text = _paired_dataset()
    config = DGMRecConfig(embedding_size=32, epochs=60, knn_k=5, batch_size=2048, seed=3, gen_training=gen_training)
    result = fit_content(dataset, config, progress=False)
    model = result.model
    assert model.contrastive
    assert model.n_users == 0 and len(result.history) == 60 and result.best_epoch == 60
    chain = [h["loss"]["chain"] for h in result.history]
    assert chain[-1] < 0.6 * chain[0]
    # the hidden texts: the generated feature finds its own item far above chance (10 / 120)
    report = heldout_report(model, [dataset.modalities[0].values, text], [np.ones(120, bool), np.ones(120, bool)])
    pair = next(p for p in report["pairs"] if p["src"] == "image" and p["dst"] == "text")
    assert pair["n"] == int((~has_text).sum())
    assert pair["generation"]["dgmrec"]["hit@10"] >= 0.5 > pair["chance"]
    assert pair["routes"]["dgmrec"]["hit@10"] >= 0.5
    # the preference input is zero: the query path needs no user
    assert torch.count_nonzero(model.mean_filter(1)) == 0


def test_content_training_is_seeded() -> None:
    dataset, _, _ = _paired_dataset(n=40)
    config = DGMRecConfig(embedding_size=8, epochs=2, knn_k=3, seed=1)
    a, b = (fit_content(dataset, config, progress=False).model for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_item_batch_gives_at_least_eight_steps() -> None:
    assert item_batch_size(3000, 2048) == 375 and item_batch_size(10, 2048) == 2
    assert item_batch_size(100_000, 2048) == 2048


def test_content_training_needs_pairs() -> None:
    dataset, _, _ = _paired_dataset(n=20)
    dataset.modalities[1].observed[:] = False
    dataset.modalities[1].observed[0] = True
    with pytest.raises(DataError, match="both an image and a text"):
        fit_content(dataset, DGMRecConfig(embedding_size=8, epochs=1), progress=False)


@pytest.fixture(scope="module")
def catalog_only(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SearchEngine]:
    root = tmp_path_factory.mktemp("catalog-only")
    catalog, _ = make_shop(root / "shop")
    encoder = ClipEncoder("dgmrec-tiny", pretrained=None, seed=0, device="cpu")
    index = root / "indexes" / "shop"
    build_index(catalog, None, index, BuildOptions(config=CONFIG, work_dir=root / "work", holdout=0.1, progress=False),
                encoder=encoder)
    return index, SearchEngine.load(index, encoder=encoder)


def test_catalog_only_index_searches_and_refuses_recommendations(catalog_only, capsys) -> None:
    index, engine = catalog_only
    assert not engine.has_users and engine.users() == []
    hits = engine.search_text("a red circle sticker", target="image", k=5)
    assert len(hits) == 5 and len({h.item_id for h in hits}) == 5
    assert any(h.generated for h in engine.search_text("a blue square", target="image", k=60))
    assert len(engine.search_image(hits[0].image, target="text", k=3)) == 3
    extra = engine.bundle.meta["extra"]
    assert extra["users"] == [] and extra["metrics"] == {"valid": {}, "test": {}}
    assert extra["heldout_eval"]["pairs"], "the held-out report still runs"
    with pytest.raises(QueryError, match="catalog alone"):
        engine.recommend("u00")
    with pytest.raises(QueryError, match="no recommendations"):
        engine.search_text("a red circle", user="u00")
    assert main(["recommend", "--index", str(index), "--user", "u00"]) == 2
    assert "catalog alone" in capsys.readouterr().err


def test_page_hides_what_needs_users(catalog_only) -> None:
    from ui.app import build_app

    _, engine = catalog_only
    config = build_app(engine, {"index": "shop"}).get_config_file()
    by_id = {c.get("props", {}).get("elem_id"): c["props"] for c in config["components"]}
    assert by_id["search-user"]["visible"] is False
    assert "catalog alone" in by_id["page-header"]["value"]
    tabs = [c["props"] for c in config["components"] if c.get("type") == "tabitem"]
    assert [t.get("visible") for t in tabs if t.get("id") == "recommend"] == [False]


def test_cli_build_without_interactions(tmp_path: Path) -> None:
    catalog, _ = make_shop(tmp_path / "shop", n_items=30)
    out = tmp_path / "indexes" / "shop"
    args = ["build", str(catalog), "--out", str(out), "--model-name", "dgmrec-tiny", "--pretrained", "none",
            "--embedding-size", "16", "--epochs", "2", "--knn-k", "5"]
    assert main(args) == 0
    assert json.loads((out / "meta.json").read_text())["extra"]["users"] == []


@pytest.mark.parametrize("content", ["user_id,item_id,timestamp\n", ""])
def test_empty_interactions_refused_before_encoding(tmp_path: Path, content: str) -> None:
    catalog, _ = make_shop(tmp_path / "shop", n_items=20)
    inter = tmp_path / "inter.csv"
    inter.write_text(content)

    class NoEncoder:
        def __getattr__(self, name: str):
            raise AssertionError(f"the catalog was encoded ({name}) before the interactions were checked")

    with pytest.raises(DataError, match="no interactions|empty") as err:
        options = BuildOptions(config=CONFIG, work_dir=tmp_path / "w", progress=False)
        build_index(catalog, inter, tmp_path / "idx", options, encoder=NoEncoder())
    assert "inter.csv" in str(err.value)


def test_page_shows_no_absolute_path(catalog_only, tmp_path: Path, monkeypatch) -> None:
    from retrieval.demo.showcase import encoder_note, index_label
    from retrieval.encode.spec import EncoderSpec
    from ui.app import build_app

    index, engine = catalog_only
    monkeypatch.chdir(index.parent.parent)
    config = build_app(engine, {"index": str(index.absolute())}).get_config_file()
    by_id = {c.get("props", {}).get("elem_id"): c["props"] for c in config["components"]}
    for elem in ("page-header", "overview-text"):
        assert str(index.parent.parent) not in by_id[elem]["value"]
        assert "shop (indexes/shop)" in by_id[elem]["value"]
    assert index_label(index.absolute()) == "shop (indexes/shop)"

    weights = tmp_path / "enc" / "compact.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"x")
    Path(str(weights) + ".json").write_text(json.dumps({"catalog": str(tmp_path / "shop" / "catalog.csv"),
                                                         "base_pretrained": None, "n_train_pairs": 9, "epochs": 1,
                                                         "eval_recall_at_10": 0.5}))
    monkeypatch.chdir(tmp_path)
    note = encoder_note(EncoderSpec("dgmrec-compact", str(weights), 0))
    assert str(tmp_path) not in note and "shop/catalog.csv" in note and "compact.pt" in note
