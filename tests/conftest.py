"""Shared fixtures: offline hub, seeded torch, and the real MovieLens data when present."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens100k-posters"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data/movielens100k-posters; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA} (../shared is absent)")
    return SHARED_DATA
