"""Fault injection (issue 9): kill `dgmrec build`, `add-items` and `train` with SIGKILL at random times.

Setup: a 60-item sample shop, an index built from it (``dgmrec-tiny`` random-weight encoder, 2 epochs,
``--seed 0``), a finished training run on small generated data (``--seed 0``), and the completed result
of each command below (its reference answers):

- build: ``dgmrec build`` over the index with ``--seed 1`` (other weights, so other answers);
- add-items: ``dgmrec add-items`` of 5 new items;
- train: ``dgmrec train --force --seed 1`` over the run.

Each round copies the state before the command into a fresh folder, starts the command, sends SIGKILL
to its process group after a random time (uniform over 0 .. 1.1 x the command's measured duration),
then checks that the index or run loads (``verify`` in full for an index; model.pt against the sha256
in metrics.json for a run) and answers exactly as before the command or as the completed command
(search and recommendation results, ids and scores; a run's top-10 items for 8 users). Writes
``benchmarks/results/fault_injection.json`` and prints a summary.

    OMP_NUM_THREADS=1 python benchmarks/fault_injection.py --rounds 30
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dgmrec_core.atomic import atomic_write_text, sha256_file  # noqa: E402

COMMANDS = ("build", "add-items", "train")
BUILD_FLAGS = ["--model-name", "dgmrec-tiny", "--pretrained", "none", "--epochs", "2", "--embedding-size", "16",
               "--knn-k", "5", "--batch-size", "256", "--holdout", "0.1"]
TRAIN_FLAGS = ["--epochs", "2", "--embedding-size", "16", "--knn-k", "5", "--batch-size", "256"]
QUERIES = ("a red hat", "a blue bag", "a green shoe")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "GRADIO_ANALYTICS_ENABLED": "False"}


def dgmrec(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ui.cli", *args], cwd=cwd, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def run_to_end(args: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = dgmrec(args, cwd)
    _, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"dgmrec {' '.join(args)} failed:\n{err.decode()[-2000:]}")
    return time.perf_counter() - started


# ---------------------------------------------------------------------- data
def make_data(root: Path) -> None:
    """shop/ (catalog, interactions, images), new.csv (5 more items), train/ (interactions and features)."""
    from retrieval.demo.sample_shop import make_sample_shop

    shop = make_sample_shop(root / "shop", n_items=60, n_users=30, image_size=32)
    with open(shop / "catalog.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    text, image = header.index("text"), header.index("image")
    first = [row for row in rows if row[text] and row[image]][:5]
    with open(shop / "new.csv", "w", newline="") as f:  # the same photos and texts under new ids
        csv.writer(f).writerows([header, *([f"new{i}", *row[1:]] for i, row in enumerate(first))])
    rng = np.random.default_rng(0)
    data = root / "train"
    data.mkdir()
    lines = ["user_id,item_id,timestamp"]
    for u in range(40):
        items = rng.choice(60, size=10, replace=False)
        lines += [f"u{u},i{i:03d},{t}" for t, i in enumerate(items)]
    (data / "inter.csv").write_text("\n".join(lines) + "\n")
    for name, dim in (("image", 24), ("text", 16)):
        np.save(data / f"{name}.npy", rng.normal(size=(60, dim)).astype(np.float32))


def train_args(root: Path, out: Path, seed: int) -> list[str]:
    data = root / "train"
    return ["train", "--interactions", str(data / "inter.csv"), "--feature", f"image={data / 'image.npy'}",
            "--feature", f"text={data / 'text.npy'}", *TRAIN_FLAGS, "--seed", str(seed), "--out", str(out)]


def command(name: str, root: Path, state: Path) -> list[str]:
    """The command line of ``name`` on the state folder ``state`` (inside ``root``)."""
    shop = root / "shop"
    if name == "build":
        return ["build", str(shop / "catalog.csv"), str(shop / "interactions.csv"), "--out",
                str(state / "indexes" / "shop"), "--work-dir", str(state / "work"), *BUILD_FLAGS, "--seed", "1"]
    if name == "add-items":
        return ["add-items", "--index", str(state / "indexes" / "shop"), "--catalog", str(shop / "new.csv")]
    return [*train_args(root, state / "run", seed=1), "--force"]


# ---------------------------------------------------------------------- answers
_ENCODER: list[Any] = []


def index_answers(index: Path) -> dict[str, Any]:
    """Everything the index answers to a fixed set of queries; raises when it does not load or verify."""
    from retrieval.encode.clip import ClipEncoder
    from retrieval.search.engine import SearchEngine
    from retrieval.index.storage import verify_bundle

    problems = verify_bundle(index)
    if problems:
        raise RuntimeError(f"verify: {problems}")
    if not _ENCODER:
        _ENCODER.append(ClipEncoder("dgmrec-tiny", None, seed=0, device="cpu"))
    engine = SearchEngine.load(index, encoder=_ENCODER[0])
    out: dict[str, Any] = {"items": len(engine.bundle)}
    for q in QUERIES:
        for target in ("image", "text"):
            hits = engine.search_text(q, target=target, k=10)
            out[f"{q}->{target}"] = [(h.item_id, round(h.score, 6)) for h in hits]
    for user in engine.users()[:3]:
        out[f"recommend {user}"] = [(h.item_id, round(h.score, 6)) for h in engine.recommend(user, k=10)]
    return out


def run_answers(run: Path) -> dict[str, Any]:
    """A run's model hash, metrics and top-10 items of 8 users; raises when model.pt and metrics.json disagree."""
    import torch

    from dgmrec_core.checkpoint import load_model

    metrics = json.loads((run / "metrics.json").read_text())
    digest = sha256_file(run / "model.pt")
    if metrics.get("model_sha256") != digest:
        raise RuntimeError("model.pt is not the model metrics.json describes")
    model, _ = load_model(run / "model.pt")
    with torch.no_grad():
        users, items = model.final_embeddings()
    top = torch.topk(users[:8] @ items.T, 10).indices.tolist()
    return {"test": metrics["test"], "config_seed": metrics["config"]["seed"], "top10": top}


def answers(name: str, state: Path) -> dict[str, Any]:
    return run_answers(state / "run") if name == "train" else index_answers(state / "indexes" / "shop")


# ---------------------------------------------------------------------- rounds
def prepare(root: Path) -> tuple[Path, dict[str, dict[str, Any]], dict[str, float]]:
    """The state before the commands, each command's reference answers (before, after) and its duration."""
    import torch

    torch.set_num_threads(1)
    make_data(root)
    before = root / "before"
    before.mkdir()
    shop = root / "shop"
    run_to_end(["build", str(shop / "catalog.csv"), str(shop / "interactions.csv"), "--out",
                str(before / "indexes" / "shop"), "--work-dir", str(before / "work"), *BUILD_FLAGS, "--seed", "0"],
               ROOT)
    run_to_end(train_args(root, before / "run", seed=0), ROOT)
    refs, seconds = {}, {}
    for name in COMMANDS:
        state = root / f"done-{name}"
        shutil.copytree(before, state, symlinks=True)
        seconds[name] = run_to_end(command(name, root, state), ROOT)
        refs[name] = {"before": answers(name, before), "after": answers(name, state)}
        if refs[name]["before"] == refs[name]["after"]:
            raise SystemExit(f"{name}: the completed command answers as before; the check could not tell them apart")
        print(f"{name}: completed in {seconds[name]:.1f} s", flush=True)
    return before, refs, seconds


def one_round(name: str, root: Path, before: Path, ref: dict[str, Any], seconds: float, rng: random.Random,
              n: int) -> dict[str, Any]:
    state = root / f"round{n:03d}"
    shutil.copytree(before, state, symlinks=True)
    delay = rng.uniform(0, 1.1 * seconds)
    proc = dgmrec(command(name, root, state), ROOT)
    try:
        proc.wait(timeout=delay)
        killed = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = True
    stderr = proc.stderr.read().decode()[-500:] if proc.stderr else ""
    result = {"command": name, "delay_s": round(delay, 2), "killed": killed, "exit": proc.returncode}
    try:
        got = answers(name, state)
        result["state"] = "before" if got == ref["before"] else "after" if got == ref["after"] else "other"
    except Exception as exc:  # noqa: BLE001 - anything that does not load is a failure
        result["state"] = "unloadable"
        result["error"] = f"{type(exc).__name__}: {exc}"[:500]
    if not killed and proc.returncode != 0:
        result["stderr"] = stderr
    result["ok"] = result["state"] in ("before", "after") and (killed or (proc.returncode == 0 and result["state"] == "after"))
    shutil.rmtree(state, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds in all, the three commands in turn (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times (default 0)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fault_injection.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dgmrec-faults-"))
    rng = random.Random(args.seed)
    started = time.perf_counter()
    try:
        before, refs, seconds = prepare(root)
        rounds = []
        for n in range(args.rounds):
            name = COMMANDS[n % len(COMMANDS)]
            r = one_round(name, root, before, refs[name], seconds[name], rng, n)
            rounds.append(r)
            print(f"round {n + 1}/{args.rounds}: {name} {'killed' if r['killed'] else 'finished'} at "
                  f"{r['delay_s']:.2f} s -> {r['state']}{'' if r['ok'] else '  FAILED ' + r.get('error', '')}",
                  flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = {}
    for name in COMMANDS:
        mine = [r for r in rounds if r["command"] == name]
        summary[name] = {"rounds": len(mine), "kills": sum(r["killed"] for r in mine),
                         "finished_before_kill": sum(not r["killed"] for r in mine),
                         "as_before": sum(r["state"] == "before" for r in mine),
                         "as_completed": sum(r["state"] == "after" for r in mine),
                         "failures": sum(not r["ok"] for r in mine), "command_seconds": round(seconds[name], 2)}
    record = {"command": f"OMP_NUM_THREADS=1 python benchmarks/fault_injection.py --rounds {args.rounds} "
                         f"--seed {args.seed}",
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s) shared", "rounds": len(rounds),
              "kills": sum(r["killed"] for r in rounds), "failures": sum(not r["ok"] for r in rounds),
              "per_command": summary, "wall_s": round(time.perf_counter() - started, 1), "details": rounds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
    print(f"{record['rounds']} rounds, {record['kills']} kills, {record['failures']} failure(s)")
    for name, s in summary.items():
        print(f"  {name}: {s['rounds']} rounds ({s['kills']} killed, {s['finished_before_kill']} finished first): "
              f"{s['as_before']} answer as before, {s['as_completed']} as completed, {s['failures']} failure(s)")
    print(f"wrote {args.out}")
    sys.exit(1 if record["failures"] else 0)


if __name__ == "__main__":
    main()
