"""One small sample-shop index and one running Gradio server per test session, shared by the app tests.

Built lazily on first use (a 300-item sample shop, the random-weight ``dgmrec-tiny`` encoder, two
training epochs) and served on a free port of 127.0.0.1 in a background thread; closed at exit.
"""
from __future__ import annotations

import atexit
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from dgmrec_core.config import DGMRecConfig


@dataclass
class Server:
    url: str
    index_dir: Path
    shop: Path
    users: list[str]
    heldout: list[str]


# gradio's queue calls pandas options that pandas 3 deprecates; not ours to fix.
GRADIO_PANDAS_WARNINGS = "ignore:.*(no_silent_downcasting|copy keyword).*"
_lock = threading.Lock()
_server: Server | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shared_server() -> Server:
    """The session's server (built and started on the first call)."""
    global _server
    with _lock:
        if _server is None:
            _server = _start()
        return _server


def _start() -> Server:
    from retrieval.search.engine import SearchEngine
    from retrieval.build.options import BuildOptions
    from retrieval.build.pipeline import build_index
    from retrieval.encode.spec import EncoderSpec
    from retrieval.demo.sample_shop import make_sample_shop
    from ui.app import launch

    root = Path(tempfile.mkdtemp(prefix="dgmrec-app-test-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    shop = make_sample_shop(root / "shop", n_items=300, n_users=150, image_size=64)
    config = replace(DGMRecConfig(), epochs=2, batch_size=1024)
    options = BuildOptions(encoder=EncoderSpec("dgmrec-tiny", None), config=config, holdout=0.1, progress=False)
    index_dir = build_index(shop / "catalog.csv", shop / "interactions.csv", root / "index", options)
    engine = SearchEngine.load(index_dir)
    port = _free_port()
    app = launch(engine, {"index": "test-shop"}, host="127.0.0.1", port=port, block=False)
    atexit.register(app.close)
    heldout = [e["item_id"] for e in engine.info.report.heldout["items"]]
    return Server(url=f"http://127.0.0.1:{port}/", index_dir=index_dir, shop=shop, users=engine.users(),
                  heldout=heldout)
