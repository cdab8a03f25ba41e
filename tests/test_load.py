"""50 concurrent searches against the running page's API on 127.0.0.1; every one answered with results.

Latency percentiles are printed (``pytest -s`` shows them), never asserted.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app_server import GRADIO_PANDAS_WARNINGS, Server, shared_server

N_REQUESTS = 50
N_IMAGE = 10
TIMEOUT_S = 180
pytestmark = pytest.mark.filterwarnings(GRADIO_PANDAS_WARNINGS)
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "purple", "orange")
CATEGORIES = ("hat", "bag", "shoe", "bottle", "clock", "book", "chair", "t-shirt")


@pytest.fixture(scope="module")
def server() -> Server:
    return shared_server()


def _check_gallery(gallery: list) -> None:
    assert gallery, "no results"
    for entry in gallery:
        assert isinstance(entry["caption"], str) and entry["caption"]
        assert entry["image"]["url"].startswith("http://127.0.0.1")


def _check_table(table: str) -> None:
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| # | item | description | score |")
    assert len(lines) > 2, "no results"


def test_fifty_concurrent_searches(server: Server) -> None:
    from gradio_client import Client, handle_file

    client = Client(server.url, verbose=False, download_files=False)
    photos = sorted((server.shop / "images").glob("*.png"))[:N_IMAGE]
    routes = ("dgmrec", "direct", "fused")
    requests = []
    for i in range(N_REQUESTS - N_IMAGE):
        text = f"a {COLOURS[i % len(COLOURS)]} {CATEGORIES[i // len(COLOURS) % len(CATEGORIES)]}"
        user = server.users[i] if i % 4 == 0 else "(anyone)"
        requests.append(("/search_text", (text, user, routes[i % 3], 10)))
    requests += [("/search_image", (handle_file(str(p)), "(anyone)", routes[i % 3], 10)) for i, p in enumerate(photos)]

    def one(request: tuple[str, tuple]) -> tuple[str, tuple, float]:
        api, args = request
        start = time.perf_counter()
        job = client.submit(*args, api_name=api)
        result = job.result(timeout=TIMEOUT_S)
        return api, result, time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=N_REQUESTS) as pool:
        answers = list(pool.map(one, requests))

    assert len(answers) == N_REQUESTS
    for api, result, _ in answers:
        if api == "/search_text":
            gallery, note = result
            _check_gallery(gallery)
            assert "products for" in note
        else:
            _preview, table, note = result
            _check_table(table)
            assert "descriptions" in note
    latency = np.array([seconds for *_, seconds in answers]) * 1000
    print(f"\n{N_REQUESTS} concurrent searches ({N_REQUESTS - N_IMAGE} text, {N_IMAGE} image): "
          f"p50 {np.percentile(latency, 50):.0f} ms, p99 {np.percentile(latency, 99):.0f} ms, "
          f"max {latency.max():.0f} ms")
