"""The page serves exactly its index's item photos, and asks for a password off this machine."""
from __future__ import annotations

import json
import logging
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from app_server import GRADIO_PANDAS_WARNINGS, _free_port, shared_server
from dgmrec_core.atomic import sha256_file
from ui.tiles import ImageGuard, item_tile, placeholder_tile
from ui.cli import main

pytestmark = pytest.mark.filterwarnings(GRADIO_PANDAS_WARNINGS)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _fake_engine(folder: Path, catalog: Path) -> SimpleNamespace:
    from retrieval.index.info import BuildInfo

    bundle = SimpleNamespace(folder=folder, path=folder)
    info = SimpleNamespace(catalog=str(catalog), catalogs=[])
    info.catalog_roots = partial(BuildInfo.catalog_roots, info)  # the real rule on the fake's two fields
    return SimpleNamespace(bundle=bundle, info=info)


def test_guard_admits_only_images_inside_the_bundle_or_catalog_folder(tmp_path: Path, caplog) -> None:
    shop, index, elsewhere = tmp_path / "shop", tmp_path / "index", tmp_path / "elsewhere"
    for d in (shop / "images", index, elsewhere):
        d.mkdir(parents=True)
    Image.new("RGB", (600, 300), "red").save(shop / "images" / "ok.png")
    Image.new("RGB", (8, 8), "blue").save(elsewhere / "outside.png")
    (shop / "images" / "link.png").symlink_to(elsewhere / "outside.png")
    (shop / "images" / "notes.txt").write_text("not an image")
    guard = ImageGuard(_fake_engine(index, shop / "catalog.csv"))
    assert guard.allowed(str(shop / "images" / "ok.png")) == str((shop / "images" / "ok.png").resolve())
    photo = guard.photo(str(shop / "images" / "ok.png"))
    assert photo.size == (448, 224)
    caplog.set_level(logging.WARNING, logger="dgmrec.app")
    for bad in ("/etc/passwd", str(elsewhere / "outside.png"), str(shop / "images" / "link.png"),
                str(index / ".." / "elsewhere" / "outside.png")):
        assert guard.allowed(bad) is None, bad
    assert guard.photo(str(shop / "images" / "notes.txt")) is None  # inside, but not an image
    assert "not serving item image /etc/passwd" in caplog.text and "not a decodable image" in caplog.text
    item = SimpleNamespace(image="/etc/passwd", title="Hat", text=None, item_id="p1")
    tile, caption = item_tile(item, "Hat", guard=guard)
    assert tile is placeholder_tile("Hat") and caption == "Hat"


def test_server_hands_out_no_file_by_path() -> None:
    server = shared_server()
    image = next((server.shop / "images").iterdir())
    for path in (image, Path("/etc/passwd"), server.index_dir / "meta.json"):
        assert _status(f"{server.url}gradio_api/file={urllib.parse.quote(str(path.resolve()))}") in (403, 404)


def test_an_index_pointing_images_at_system_files_serves_none_of_them(tmp_path: Path, caplog) -> None:
    from gradio_client import Client

    from retrieval.search.engine import SearchEngine
    from ui.app import launch

    server = shared_server()
    folder = tmp_path / "index"
    shutil.copytree(server.index_dir.resolve(), folder)
    meta = json.loads((folder / "meta.json").read_text())
    for name in meta["item_files"]:  # the item store's image column, with the sizes recorded to match
        segment = json.loads((folder / name).read_text())
        segment["columns"]["image"] = [os.path.relpath("/etc/passwd", folder)] * segment["rows"]
        (folder / name).write_text(json.dumps(segment))
        meta["checksums"][name] = {"size": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
    (folder / "meta.json").write_text(json.dumps(meta))
    engine = SearchEngine.load(folder)
    caplog.set_level(logging.WARNING, logger="dgmrec.app")
    port = _free_port()
    app = launch(engine, {"index": "tampered"}, host="127.0.0.1", port=port, block=False)
    try:
        api = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        gallery, _ = api.predict("a red hat", "(anyone)", "dgmrec", 8, api_name="/search_text")
        assert len(gallery) == 8
        for entry in gallery:
            with urllib.request.urlopen(entry["image"]["url"], timeout=30) as response:
                body = response.read()
            assert b"root:" not in body
            assert Image.open(__import__("io").BytesIO(body)).size == (224, 224)  # the placeholder tile
        assert "not serving item image /etc/passwd" in caplog.text
    finally:
        app.close()


@pytest.mark.parametrize("argv, message", [
    (["serve", "--index", "nowhere", "--host", "0.0.0.0"], "--host 0.0.0.0 makes the page reachable"),
    (["serve", "--index", "nowhere", "--host", "10.1.2.3", "--auth", "nopass"], "--auth expects USER:PASS"),
    (["demo", "--host", "example.org"], "give --auth USER:PASS"),
])
def test_non_loopback_host_needs_auth_or_public(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_server_access_options() -> None:
    from ui.cli_app import server_access

    def args(**kw):
        return SimpleNamespace(**{"host": "127.0.0.1", "auth": None, "public": False, **kw})

    assert server_access(args()) is None and server_access(args(host="localhost")) is None
    assert server_access(args(host="::1")) is None
    assert server_access(args(host="0.0.0.0", auth="ann:s3cret:x")) == ("ann", "s3cret:x")
    assert server_access(args(host="0.0.0.0", public=True)) is None


def test_a_moved_bundle_finds_its_catalog_encoder_and_photos_and_still_guards(tmp_path: Path) -> None:
    import torch

    from dgmrec_core.config import DGMRecConfig
    from retrieval.build.options import BuildOptions
    from retrieval.build.pipeline import build_index
    from retrieval.demo.sample_shop import make_sample_shop
    from retrieval.encode.clip import ClipEncoder
    from retrieval.encode.spec import EncoderSpec
    from retrieval.search.engine import SearchEngine

    old, new = tmp_path / "built-here", tmp_path / "moved-there"
    shop = make_sample_shop(old / "shop", n_items=80, n_users=40, image_size=32)
    weights = old / "encoders" / "tiny.pt"
    weights.parent.mkdir()
    torch.save(ClipEncoder("dgmrec-tiny", pretrained=None, seed=3).model.state_dict(), weights)
    options = BuildOptions(encoder=EncoderSpec("dgmrec-tiny", str(weights)), holdout=0.1, progress=False,
                           config=DGMRecConfig(embedding_size=16, epochs=1, batch_size=1024))
    build_index(shop / "catalog.csv", shop / "interactions.csv", old / "indexes" / "shop", options)
    assert str(tmp_path) not in (old / "indexes" / "shop" / "meta.json").read_text()  # nothing absolute
    shutil.move(old, new)  # bundle, catalog, images and encoder together; the old folder is gone

    engine = SearchEngine.load(new / "indexes" / "shop")  # the encoder recorded in the bundle, found here
    assert engine.encoder.pretrained == str((new / "encoders" / "tiny.pt").resolve())
    item = next(engine.item(i) for i in engine.bundle.item_ids if engine.item(i).image)
    assert Path(item.image).is_relative_to(new.resolve())
    guard = ImageGuard(engine)
    assert guard.allowed(item.image) == item.image and guard.photo(item.image) is not None
    Image.new("RGB", (8, 8), "blue").save(new / "outside.png")  # beside the catalog's folder, not in it
    for bad in (str(new / "shop" / ".." / "outside.png"), str(new / "outside.png"), "/etc/passwd"):
        assert guard.allowed(bad) is None, bad

    # a bundle written before (absolute catalog and weights paths) still loads and shows its photos
    meta_path = new / "indexes" / "shop" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["extra"]["catalog"] = str((new / "shop" / "catalog.csv").resolve())
    meta["extra"]["encoder"] = {k: v for k, v in meta["extra"]["encoder"].items() if k != "pretrained_file"}
    meta["extra"]["encoder"]["pretrained"] = str((new / "encoders" / "tiny.pt").resolve())
    meta_path.write_text(json.dumps(meta))
    engine = SearchEngine.load(new / "indexes" / "shop")
    assert engine.encoder.pretrained == str((new / "encoders" / "tiny.pt").resolve())
    assert ImageGuard(engine).allowed(item.image) == item.image
