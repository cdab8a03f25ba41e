"""benchmarks/provenance.py: a run on a patched tree is not filed under the clean commit."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from provenance import code_commit  # noqa: E402


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_code_commit_marks_changed_code_but_not_results(tmp_path) -> None:
    try:
        _git(tmp_path, "init", "-q")
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"git is not usable here: {exc}")
    for rel in ("dgmrec_core/model.py", "benchmarks/results/run.json", "benchmarks/RESULTS.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("0\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    head = _git(tmp_path, "rev-parse", "--short", "HEAD")
    assert code_commit(tmp_path) == head
    (tmp_path / "benchmarks/results/run.json").write_text("1\n")  # a benchmark's own output
    (tmp_path / "benchmarks/RESULTS.md").write_text("1\n")
    assert code_commit(tmp_path) == head
    (tmp_path / "dgmrec_core/model.py").write_text("1\n")  # the code a run depends on
    assert code_commit(tmp_path) == head + "+dirty"
    assert code_commit(tmp_path / "nowhere") == ""
