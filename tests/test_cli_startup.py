"""The command line imports heavy modules (torch, open_clip, gradio, faiss) only in the commands that run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "gradio", "faiss", "matplotlib", "pandas")
PROBE = ("import sys\nfrom ui.cli import build_parser\n"
         "parser = build_parser()\n"
         "for argv in {argvs!r}:\n"
         "    try:\n        parser.parse_args(argv)\n    except SystemExit:\n        pass\n"
         "print('HEAVY:' + ','.join(m for m in {heavy!r} if m in sys.modules))")


def test_help_texts_import_nothing_heavy() -> None:
    argvs = [["--help"], *([c, "--help"] for c in ("build", "search", "demo", "serve", "finetune-encoder", "train"))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", PROBE.format(argvs=argvs, heavy=HEAVY)], capture_output=True,
                         text=True, env=env, cwd=ROOT, check=True).stdout.splitlines()
    assert out[-1] == "HEAVY:", f"imported while building the parser or printing help: {out[-1]}"
