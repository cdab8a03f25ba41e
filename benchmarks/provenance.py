"""Where a benchmark's figures came from: the commit of the code it ran."""
from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = ("dgmrec_core", "retrieval", "benchmarks", "ui")  # what a run's figures depend on (results excluded below)


def code_commit(root: Path = ROOT) -> str:
    """The short hash of ``root``'s checked-out commit ('' outside a git checkout), with '+dirty' when the code it
    runs differs from that commit (tracked changes under CODE, benchmark results aside), so that a run on a
    patched tree is never filed under the clean commit."""
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    commit = head.stdout.strip()
    if not commit:
        return ""
    status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", *CODE,
                             ":(exclude)benchmarks/results", ":(exclude)benchmarks/*.md"],
                            capture_output=True, text=True)
    return commit + ("+dirty" if status.stdout.strip() else "")
