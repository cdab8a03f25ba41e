"""The page's API on bad input, the app commands' options, and the demo's encoder choice and caching."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from app_server import GRADIO_PANDAS_WARNINGS, shared_server
from retrieval.defaults import DEMO_FINETUNE_EPOCHS, DEMO_TRAINING
from retrieval.search.engine import QueryError
from retrieval.demo.showcase import MAX_UPLOAD_PIXELS, check_query_image

pytestmark = pytest.mark.filterwarnings(GRADIO_PANDAS_WARNINGS)


@pytest.fixture(scope="module")
def client():
    from gradio_client import Client

    server = shared_server()
    return server, Client(server.url, verbose=False, download_files=False)


def _error_text(markdown: str) -> str:
    assert "dgmrec-error" in markdown, markdown
    return markdown


def test_bad_queries_get_messages_and_the_server_keeps_answering(client, tmp_path: Path) -> None:
    from gradio_client import handle_file

    server, api = client
    gallery, note = api.predict("   ", "(anyone)", "dgmrec", 5, api_name="/search_text")
    assert gallery == [] and "query text is empty" in _error_text(note)
    gallery, note = api.predict("a red hat", "no-such-user", "dgmrec", 5, api_name="/search_text")
    assert gallery == [] and "unknown user id 'no-such-user'" in _error_text(note)

    fake = tmp_path / "fake.png"
    fake.write_text("not an image at all")
    _, table, note = api.predict(handle_file(str(fake)), "(anyone)", "dgmrec", 5, api_name="/search_image")
    assert table == "" and "not an image that can be opened" in _error_text(note)

    huge = tmp_path / "huge.png"
    Image.new("L", (7000, 6000), 200).save(huge)
    _, table, note = api.predict(handle_file(str(huge)), "(anyone)", "dgmrec", 5, api_name="/search_image")
    assert table == "" and "megapixels" in _error_text(note)

    _, _, note = api.predict("nobody", 5, api_name="/recommend")
    assert "unknown user id 'nobody'" in _error_text(note)

    gallery, note = api.predict("a red hat", server.users[0], "fused", 5, api_name="/search_text")
    assert len(gallery) == 5 and f"for user {server.users[0]}" in note


def test_heldout_endpoint_shows_the_real_item_and_its_rank(client) -> None:
    server, api = client
    assert server.heldout, "the test index has held-out items"
    _, text, neighbours, table, summary = api.predict(server.heldout[0], api_name="/heldout")
    assert server.heldout[0] in text and "The real item ranks" in summary
    assert neighbours and table.startswith("| # |")


def test_check_query_image(tmp_path: Path) -> None:
    ok = tmp_path / "ok.png"
    Image.new("RGB", (32, 32)).save(ok)
    assert check_query_image(str(ok)) == ok
    with pytest.raises(QueryError, match="no image uploaded"):
        check_query_image(None)
    big = tmp_path / "big.png"
    side = int(MAX_UPLOAD_PIXELS ** 0.5) + 10
    Image.new("L", (side, side)).save(big)
    with pytest.raises(QueryError, match="megapixels"):
        check_query_image(big)


def test_every_app_option_has_help() -> None:
    from ui import cli_app

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli_app.register(sub)
    for name in ("demo", "serve", "finetune-encoder"):
        command = sub.choices[name]
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"{name} {action.option_strings} has no help"
    args = parser.parse_args(["demo", "--no-serve"])
    assert (args.work, args.index_name, args.port, args.host, args.items) == \
        (Path(".cache/demo"), "sample-shop", 7860, "127.0.0.1", 3000)


def test_auto_encoder_falls_back_to_the_compact_one_and_remembers(tmp_path: Path, monkeypatch, caplog) -> None:
    from retrieval.demo import run as demo
    from retrieval.encode.clip import ClipEncoder, EncoderUnavailable

    tries = []

    def unavailable(model_name, pretrained, quick):
        tries.append(pretrained)
        raise EncoderUnavailable("offline")

    def compact(catalog_path, work, **kwargs):
        record = {"n_train_pairs": 10, "epochs": 1, "eval_recall_at_10": 0.5, "catalog": str(catalog_path)}
        return ClipEncoder("dgmrec-tiny", None), record

    monkeypatch.setattr(demo, "_load_pretrained", unavailable)
    monkeypatch.setattr(demo, "finetuned_encoder", compact)
    caplog.set_level(logging.INFO, logger="dgmrec")
    encoder, info = demo.choose_encoder("auto", tmp_path / "catalog.csv", tmp_path)
    assert info["kind"] == "fine-tuned" and "not available here" in info["note"]
    assert any("unavailable; fine-tuning the compact encoder" in m for m in caplog.messages)
    assert json.loads((tmp_path / "encoder.json").read_text())["choice"] == "compact"

    encoder, info = demo.choose_encoder("auto", tmp_path / "catalog.csv", tmp_path)
    assert tries == ["laion2b_s34b_b79k"], "the second run does not wait on the pretrained weights again"
    with pytest.raises(EncoderUnavailable):
        demo.choose_encoder("pretrained", tmp_path / "catalog.csv", tmp_path)


def test_demo_builds_once_then_reuses_everything(tmp_path: Path, monkeypatch, caplog) -> None:
    from retrieval.demo import run as demo
    from retrieval.encode.clip import ClipEncoder

    asked = []

    def tiny(mode, catalog_path, work, **kwargs):
        asked.append(kwargs["finetune_epochs"])
        return ClipEncoder("dgmrec-tiny", None), {"kind": "test", "note": "tiny random encoder", "spec": {}}

    monkeypatch.setattr(demo, "choose_encoder", tiny)
    built = []
    real_build = demo.build_index
    monkeypatch.setattr(demo, "build_index", lambda *a, **k: built.append(a) or real_build(*a, **k))
    caplog.set_level(logging.INFO, logger="dgmrec")
    args = dict(index_dir=tmp_path / "indexes" / "shop", n_items=80, epochs=1)
    first = demo.run_demo(tmp_path / "work", **args)
    assert (first.index_dir / "meta.json").is_file() and len(built) == 1
    second = demo.run_demo(tmp_path / "work", **args)
    assert len(built) == 1, "an unchanged second run does not rebuild"
    assert any("is up to date" in m for m in caplog.messages)
    assert second.index_dir == first.index_dir and second.catalog == first.catalog
    assert asked == [DEMO_FINETUNE_EPOCHS] * 2  # the sample shop's fine-tuning length


def test_demo_training_schedule_is_the_short_one() -> None:
    from retrieval.demo import run as demo

    config = demo.demo_config()
    assert (config.epochs, config.eval_every, config.patience, config.gen_refit_steps) == \
        tuple(DEMO_TRAINING[k] for k in ("epochs", "eval_every", "patience", "gen_refit_steps"))
    assert config.eval_every == 1 and demo.demo_config(epochs=3).epochs == 3
