"""Logging of the command line and the page, configured once: the ``dgmrec`` loggers' INFO messages on
standard output, written between progress bars (they stay: tqdm)."""
from __future__ import annotations

import logging
import sys

from tqdm import tqdm


class _BetweenBars(logging.Handler):
    """Writes each record with ``tqdm.write`` to the standard output of the moment (bars stay whole)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stdout)
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def configure_logging(level: int = logging.INFO) -> None:
    """Send the ``dgmrec`` loggers' messages to standard output (idempotent: one handler, once)."""
    logger = logging.getLogger("dgmrec")
    logger.setLevel(level)
    root = logging.getLogger()
    if not root.handlers:  # else a library's module-level logging.warning() runs basicConfig on the root
        root.addHandler(logging.NullHandler())  # logger, and every dgmrec message is printed twice
    if not any(isinstance(h, _BetweenBars) for h in logger.handlers):
        handler = _BetweenBars()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
