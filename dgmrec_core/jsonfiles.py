"""Small JSON helpers shared by the packages: a tolerant reader and a canonical form for comparisons."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: str | Path) -> Any | None:
    """The JSON value in ``path``, or None when the file is missing, unreadable or not JSON (a cache miss)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def canonical(value: Any) -> str:
    """``value`` as sorted-key JSON (anything else as its ``str``): equal values give equal strings."""
    return json.dumps(value, sort_keys=True, default=str)
