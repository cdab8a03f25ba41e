"""Load test of `dgmrec serve` (issue 9): concurrent mixed requests against the page's API on 127.0.0.1.

Builds a small sample-shop index (random-weight ``dgmrec-tiny`` encoder, 2 epochs), starts
``dgmrec serve`` on a free loopback port as a separate process, then sends ``--requests`` requests at
once through ``gradio_client`` (text search, image search and recommend, in turn), each bounded by
``--timeout`` seconds. An answer counts only when it carries results. Writes
``benchmarks/results/load_test.json`` and prints errors, p50 and p99.

    OMP_NUM_THREADS=1 python benchmarks/load_test.py --requests 120
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dgmrec_core.atomic import atomic_write_text  # noqa: E402
from dgmrec_core.config import DGMRecConfig  # noqa: E402

KINDS = ("text", "image", "recommend")
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "purple", "orange")
CATEGORIES = ("hat", "bag", "shoe", "bottle", "clock", "book", "chair", "t-shirt")
ROUTES = ("auto", "dgmrec", "direct", "fused")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(work: Path, n_items: int) -> tuple[Path, Path, list[str]]:
    """A small index of the sample shop: (index folder, shop folder, user ids)."""
    from retrieval.search.engine import SearchEngine
    from retrieval.build.options import BuildOptions
    from retrieval.build.pipeline import build_index
    from retrieval.encode.spec import EncoderSpec
    from retrieval.demo.sample_shop import make_sample_shop

    shop = make_sample_shop(work / "shop", n_items=n_items, n_users=n_items // 2, image_size=64)
    options = BuildOptions(encoder=EncoderSpec("dgmrec-tiny", None), holdout=0.1, progress=False,
                           config=replace(DGMRecConfig(), epochs=2, batch_size=1024))
    index = build_index(shop / "catalog.csv", shop / "interactions.csv", work / "index", options)
    return index, shop, SearchEngine.load(index).users()


def start_server(index: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "ui.cli", "serve", "--index", str(index), "--host", "127.0.0.1",
                             "--port", str(port)], cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"dgmrec serve exited ({proc.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                if response.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"dgmrec serve did not answer within 180 s; see {log}")


def requests_for(n: int, shop: Path, users: list[str]) -> list[tuple[str, str, tuple]]:
    """(kind, api name, arguments) for ``n`` requests, the three kinds in turn."""
    from gradio_client import handle_file

    photos = sorted((shop / "images").glob("*.png"))
    out = []
    for i in range(n):
        kind = KINDS[i % 3]
        user = users[i % len(users)] if i % 4 == 0 else "(anyone)"
        if kind == "text":
            text = f"a {COLOURS[i % len(COLOURS)]} {CATEGORIES[i // len(COLOURS) % len(CATEGORIES)]}"
            out.append((kind, "/search_text", (text, user, ROUTES[i % 4], 10)))
        elif kind == "image":
            out.append((kind, "/search_image", (handle_file(str(photos[i % len(photos)])), user, ROUTES[i % 4], 10)))
        else:
            out.append((kind, "/recommend", (users[i % len(users)], 10)))
    return out


def check(kind: str, result: tuple) -> str | None:
    """Why an answer is not a full answer, or None."""
    if kind == "text":
        gallery, note = result
        return None if gallery and "products for" in note else f"no results: {note[:200]}"
    if kind == "image":
        _preview, table, note = result
        rows = [line for line in table.splitlines() if line.startswith("|")]
        return None if len(rows) > 2 and "descriptions" in note else f"no results: {note[:200]}"
    _past, top, note = result
    return None if top and "recommendations" in note else f"no results: {note[:200]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=120, help="requests sent at once (default 120)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds each request may take (default 300)")
    parser.add_argument("--items", type=int, default=300, help="items of the sample shop (default 300)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "load_test.json")
    args = parser.parse_args()
    answers, wall = serve_and_load(args.items, args.requests, args.timeout)
    record = summary(answers, wall, requests=args.requests, items=args.items)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
    errors = record["error_messages"]
    mix = ", ".join(f"{v['requests']} {k}" for k, v in record["per_kind"].items())
    print(f"{len(answers)} concurrent requests ({mix}) "
          f"in {wall:.1f} s: {record['errors']} error(s); p50 {record['p50_ms']:.0f} ms, "
          f"p99 {record['p99_ms']:.0f} ms, max {record['max_ms']:.0f} ms")
    for line in errors[:10]:
        print(f"  error: {line}")
    print(f"wrote {args.out}")
    sys.exit(1 if errors else 0)


def serve_and_load(items: int, requests: int, timeout: float) -> tuple[list[tuple[str, float, str | None]], float]:
    """Build a sample-shop index of ``items`` items, serve it and send ``requests`` requests at once: each
    answer as (kind, seconds, problem or None), and the wall time of them all."""
    from gradio_client import Client

    work = Path(tempfile.mkdtemp(prefix="dgmrec-load-"))
    server = None
    try:
        started = time.perf_counter()
        index, shop, users = build(work, items)
        print(f"index: {index} ({items} items) in {time.perf_counter() - started:.0f} s", flush=True)
        port = _free_port()
        server = start_server(index, port, work / "serve.log")
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        return send_all(client, requests_for(requests, shop, users), timeout)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
        shutil.rmtree(work, ignore_errors=True)


def send_all(client, todo: list[tuple[str, str, tuple]], timeout: float
             ) -> tuple[list[tuple[str, float, str | None]], float]:
    """Send every request of ``todo`` at once; (kind, seconds, problem or None) per answer, and the wall time."""

    def one(request: tuple[str, str, tuple]) -> tuple[str, float, str | None]:
        kind, api, params = request
        start = time.perf_counter()
        try:
            problem = check(kind, client.submit(*params, api_name=api).result(timeout=timeout))
        except Exception as exc:  # noqa: BLE001 - every failure is an error of the load test
            problem = f"{type(exc).__name__}: {str(exc)[:200]}"
        return kind, time.perf_counter() - start, problem

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(todo)) as pool:
        answers = list(pool.map(one, todo))
    return answers, time.perf_counter() - started


def summary(answers: list[tuple[str, float, str | None]], wall: float, *, requests: int, items: int) -> dict:
    """The record written to the results file: latencies overall and per kind, errors, the machine."""
    ms = np.array([seconds for _, seconds, _ in answers]) * 1000
    errors = [f"{kind}: {problem}" for kind, _, problem in answers if problem]
    per_kind = {}
    for kind in KINDS:
        k_ms = np.array([s for k, s, _ in answers if k == kind]) * 1000
        per_kind[kind] = {"requests": int(len(k_ms)), "errors": sum(1 for k, _, p in answers if k == kind and p),
                          "p50_ms": float(np.percentile(k_ms, 50)), "p99_ms": float(np.percentile(k_ms, 99))}
    return {"command": f"OMP_NUM_THREADS=1 python benchmarks/load_test.py --requests {requests}",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s) shared", "items": items,
            "requests": len(answers), "concurrent": len(answers), "errors": len(errors),
            "error_messages": errors[:20], "wall_s": wall, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "per_kind": per_kind,
            "server": "dgmrec serve --host 127.0.0.1 (Gradio queue, default_concurrency_limit 2)"}


if __name__ == "__main__":
    main()
