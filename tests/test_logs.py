"""Logging of the CLI and the page: each dgmrec message once, even after a library logs at module level."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_library_warning_does_not_make_every_message_print_twice():
    code = ("import logging; from ui.logs import configure_logging; configure_logging(); "
            "logging.warning('a library at module level'); logging.getLogger('dgmrec.demo').info('one line')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert (out.stdout + out.stderr).count("one line") == 1, out
