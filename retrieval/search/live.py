"""An engine that follows its index: a running page answers from every new version without a restart.

Before a use, at most once per ``interval`` seconds, :class:`LiveEngine` reads which version folder the
index's name resolves to (a link read and a few stats). When that is not the version its engine was
loaded from (``add-items`` or a rebuild switched the link), it loads the new version and swaps it in
with one assignment: a request already running finishes on the old engine, the next one uses the new
one. The model and encoder are kept when the new version was built with the same ones. A version that
fails to load is logged and the old engine keeps answering; the check is repeated after ``interval``.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from dgmrec_core.jsonfiles import canonical
from retrieval.search.engine import SearchEngine
from retrieval.index.bundle import IndexBundle
from retrieval.index.storage import IndexMismatch, bundle_version

CHECK_INTERVAL_S = 1.0
log = logging.getLogger("dgmrec.live")


class LiveEngine:
    """A :class:`SearchEngine` that reloads its index when a new version is switched in.

    Attribute access goes to the current engine (``live.search_text(...)``, ``live.bundle``), so one call
    runs wholly on one version.
    """

    def __init__(self, engine: SearchEngine, *, interval: float = CHECK_INTERVAL_S) -> None:
        self._engine = engine
        self.interval = interval
        self.reloads = 0
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    @property
    def engine(self) -> SearchEngine:
        """The engine of the index's current version (checked at most once per ``interval``)."""
        now = time.monotonic()
        if now - self._checked >= self.interval and self._lock.acquire(blocking=False):
            try:
                self._checked = now
                self._follow()
            finally:
                self._lock.release()
        return self._engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def _follow(self) -> None:
        old = self._engine
        try:
            if bundle_version(old.bundle.folder) == old.bundle.path:
                return
            self._engine = _reload(old)
        except Exception as exc:  # keep answering from the version loaded; try again later
            log.warning("index %s changed but its new version could not be loaded (%s); still serving the "
                        "version loaded before", old.bundle.folder, exc)
            return
        self.reloads += 1
        log.info("index %s: now serving %s (%d items)", old.bundle.folder, self._engine.bundle.path,
                 len(self._engine.bundle))


def _reload(old: SearchEngine) -> SearchEngine:
    """The engine of the index's current version, reusing ``old``'s model and encoder where they fit."""
    bundle = IndexBundle.load(old.bundle.folder)
    same_encoder = canonical(bundle.encoder_fingerprint) == canonical(old.bundle.encoder_fingerprint)
    if same_encoder and bundle.model_fingerprint == old.bundle.model_fingerprint:
        if bundle.modalities != old.bundle.modalities:
            raise IndexMismatch(bundle.folder, f"modalities changed from {old.bundle.modalities} to {bundle.modalities}")
        return SearchEngine(bundle, old.model, old.encoder)
    return SearchEngine.load(old.bundle.folder, encoder=old.encoder if same_encoder else None)


def follow(engine: SearchEngine | LiveEngine, *, interval: float = CHECK_INTERVAL_S) -> LiveEngine:
    """``engine`` as a :class:`LiveEngine` (itself when it already is one)."""
    return engine if isinstance(engine, LiveEngine) else LiveEngine(engine, interval=interval)
