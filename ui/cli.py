"""`dgmrec`: the command line. Each command group lives in its own module and registers itself here."""
from __future__ import annotations

import argparse
import os
import sys
import warnings

from dgmrec_core.errors import DataError
from ui.logs import configure_logging

# Modules that each define `register(subparsers)`; a command's handler is stored as `func`.
COMMAND_MODULES = ("ui.cli_train", "ui.cli_encode", "ui.cli_index", "ui.cli_app")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dgmrec", description="DGMRec Search: recommendation and cross-modal retrieval with missing modalities.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    configure_logging()
    warnings.formatwarning = _one_line_warning
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _one_line_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> str:
    """A warning as one plain line for the user ("warning: ..."), without the source file and line."""
    return f"warning: {message}\n"


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors caused by the user's input: printed as one line (exit code 2) instead of a traceback."""
    from retrieval.encode.clip import EncoderUnavailable
    from retrieval.search.engine import QueryError
    from retrieval.index.storage import IndexMismatch

    return (DataError, QueryError, IndexMismatch, EncoderUnavailable)


if __name__ == "__main__":
    sys.exit(main())
