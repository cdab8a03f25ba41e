"""A live engine and a running page see items another writer adds, without a restart, and keep answering."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app_server import GRADIO_PANDAS_WARNINGS, _free_port
from retrieval.search.engine import SearchEngine
from retrieval.build.ingest import add_items
from retrieval.search.live import LiveEngine, follow
from test_engine import COLOURS, SHAPES, Built, _copy_bundle, _item_row, _write_catalog, built  # noqa: F401

pytestmark = pytest.mark.filterwarnings(GRADIO_PANDAS_WARNINGS)
QUERY = "a purple cross sticker number 203"


def _new_catalog(built: Built, name: str, n: int = 3, title: str | None = None) -> Path:
    shop = built.catalog.parent
    rows = []
    for i in range(n):
        row = _item_row(shop, f"{name}{i}", 200 + i, SHAPES[i % 4], list(COLOURS)[i % 5], image=True, text=True)
        rows.append(row if title is None else [*row[:3], f"{title} {i}", row[4]])
    rows[-1] = _item_row(shop, f"{name}{n}", 203, "cross", "purple", image=False, text=True)
    return _write_catalog(shop / f"{name}.csv", rows)


def test_a_live_engine_sees_items_another_writer_added(built: Built) -> None:
    folder = _copy_bundle(built, "live")
    live = LiveEngine(SearchEngine.load(folder, encoder=built.encoder), interval=0)
    model = live.engine.model
    before = live.search_text(QUERY, target="text", k=1)[0].item_id
    writer = SearchEngine.load(folder, encoder=built.encoder)  # another process's engine
    add_items(writer, _new_catalog(built, "L"))
    hit = live.search_text(QUERY, target="text", k=1)[0]
    assert before != "L3" and hit.item_id == "L3" and not hit.generated
    assert live.reloads == 1 and len(live.bundle) == 63 and live.engine.model is model  # the model is kept
    assert live.item("L0").text and live.recommend("u00", k=5)

    # a long interval: no check, the loaded version keeps answering
    slow = LiveEngine(SearchEngine.load(folder, encoder=built.encoder), interval=3600)
    add_items(writer, _new_catalog(built, "M"))
    assert len(slow.bundle) == 63 and slow.reloads == 0
    assert len(live.bundle) == 66 and live.reloads == 2
    assert follow(live) is live


def test_a_new_version_that_cannot_load_leaves_the_old_one_answering(built: Built, caplog) -> None:
    folder = _copy_bundle(built, "live-broken")
    live = LiveEngine(SearchEngine.load(folder, encoder=built.encoder), interval=0)
    writer = SearchEngine.load(folder, encoder=built.encoder)
    add_items(writer, _new_catalog(built, "B"))
    with open(writer.bundle.path / "items.npy", "r+b") as f:  # the new version is damaged
        f.truncate(100)
    caplog.set_level(logging.WARNING, logger="dgmrec.live")
    assert len(live.search_text(QUERY, target="text", k=3)) == 3
    assert live.reloads == 0 and len(live.bundle) == 60
    assert "could not be loaded" in caplog.text and "items.npy" in caplog.text


def test_the_running_page_shows_added_items_and_keeps_answering_during_the_swap(built: Built) -> None:
    from gradio_client import Client

    from ui.app import launch

    folder = _copy_bundle(built, "live-page")
    live = LiveEngine(SearchEngine.load(folder, encoder=built.encoder), interval=0)
    port = _free_port()
    app = launch(live, {"index": "live"}, host="127.0.0.1", port=port, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)

        def search(_: int) -> list:
            gallery, note = client.predict(QUERY, "(anyone)", "dgmrec", 50, api_name="/search_text")
            assert "products for" in note, note
            return [entry["caption"] for entry in gallery]

        assert not any("Gadget" in c for c in search(0))
        writer = SearchEngine.load(folder, encoder=built.encoder)
        with ThreadPoolExecutor(8) as pool:
            during = pool.map(search, range(16))  # requests while the new version is written and switched in
            add_items(writer, _new_catalog(built, "G", n=30, title="Gadget"))
            assert all(len(captions) == 50 for captions in during)
        assert any("Gadget" in c for c in search(0))
        assert live.reloads == 1
    finally:
        app.close()
