"""Run folders of `dgmrec train --out` are published whole: a kill at any step leaves the old or the new run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from dgmrec_core.atomic import sha256_file
from dgmrec_core.checkpoint import load_model
from test_cli_train import FAST, _data_args, files  # noqa: F401 - the fixture is used by name
from ui.cli import main
from ui.cli_train import partial_folder

ROOT = Path(__file__).resolve().parents[1]
# Runs `dgmrec ARGS...`, dying like kill -9 at the STEP-th rename, replace or symlink call.
CRASH = f"""
import sys
sys.path.insert(0, {str(ROOT / "tests")!r})
import ui.cli, dgmrec_core.trainer
from crashpoints import die_at_fs_call
die_at_fs_call(int(sys.argv[1]))
sys.exit(ui.cli.main(sys.argv[2:]))
"""


def _run_state(run: Path) -> tuple[str, dict]:
    """The run's model hash and metrics, after checking they belong together and the model loads."""
    metrics = json.loads((run / "metrics.json").read_text())
    digest = sha256_file(run / "model.pt")
    assert metrics["model_sha256"] == digest
    load_model(run / "model.pt")
    assert len(json.loads((run / "history.json").read_text())) >= 1
    return digest, metrics


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if any(t in p.name for t in (".tmp-", ".link-", ".partial")))


def test_a_kill_at_any_step_leaves_the_old_or_the_new_run(files, tmp_path: Path) -> None:  # noqa: F811
    main(["make-mask", "--items", "60", "--out", str(files / "mask.npz")])
    base = tmp_path / "base"
    base.mkdir()
    assert main(["train", *_data_args(files), *FAST, "--out", str(base / "run")]) == 0
    old = _run_state(base / "run")
    assert (base / "run").is_symlink() and _leftovers(base) == []
    # with a generation refit: its rewrite of the finished checkpoint is one of the steps killed
    argv = ["train", *_data_args(files), *FAST, "--gen-refit-steps", "50", "--seed", "7", "--out", None, "--force"]
    step, seen = 1, set()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    while True:
        parent = tmp_path / f"step{step}"
        shutil.copytree(base, parent, symlinks=True)
        run = parent / "run"
        argv[argv.index("--out") + 1] = str(run)
        proc = subprocess.run([sys.executable, "-c", CRASH, str(step), *argv], env=env, capture_output=True,
                              text=True, timeout=300)
        state = _run_state(run)
        assert state[0] == old[0] or state[1]["config"]["seed"] == 7, step
        seen.add("old" if state[0] == old[0] else "new")
        if proc.returncode == 0:
            assert _leftovers(parent) == []
            break
        assert proc.returncode == 9, proc.stderr
        # the next run cleans up and works
        assert main(["train", *_data_args(files), *FAST, "--seed", "7", "--out", str(run), "--force"]) == 0
        assert _run_state(run)[1]["config"]["seed"] == 7 and _leftovers(parent) == []
        shutil.rmtree(parent)
        step += 1
    assert step >= 5 and seen == {"old", "new"}


def test_an_interrupted_run_is_resumed_from_its_partial_checkpoint(files, tmp_path: Path, capsys) -> None:  # noqa: F811
    main(["make-mask", "--items", "60", "--out", str(files / "mask.npz")])
    whole = tmp_path / "whole"
    assert main(["train", *_data_args(files), *FAST, "--eval-every", "1", "--out", str(whole)]) == 0
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # step 2: the second checkpoint save (after epoch 2) dies; epoch 1's checkpoint is kept
    proc = subprocess.run([sys.executable, "-c", CRASH, "2", "train", *_data_args(files), *FAST,
                           "--eval-every", "1", "--out", str(run)], env=env, capture_output=True, timeout=300)
    assert proc.returncode == 9 and not run.exists() and (partial_folder(run) / "model.pt").is_file()
    capsys.readouterr()
    assert main(["train", *_data_args(files), *FAST, "--eval-every", "1", "--out", str(run)]) == 2
    assert "an interrupted training of this run" in capsys.readouterr().err
    assert main(["train", *_data_args(files), *FAST, "--eval-every", "1", "--out", str(run), "--resume"]) == 0
    assert _run_state(run)[1]["test"] == _run_state(whole)[1]["test"]
    assert not partial_folder(run).exists()
