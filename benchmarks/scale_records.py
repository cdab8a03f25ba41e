"""The records of benchmarks/results/scale.json (issue 13): training speed and memory at scale, and the
large-index figures. Each benchmark merges its own records in; a record replaces an older one with the
same key (its ``kind`` and the fields named by ``KEYS``), every other record stays."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
# Fields that identify a record of each kind; a new record with the same values replaces the old one.
KEYS = {"training": ("benchmark", "dataset", "mode", "threads", "processes", "seed", "device", "allocator",
                     "batch_size"),
        "index": ("dataset", "index", "threads")}
# records from before a field existed: what they measured
DEFAULTS = {"device": "cpu", "allocator": "glibc default", "batch_size": 2048}


def _key(record: dict[str, Any]) -> tuple:
    kind = record["kind"]
    return (kind, *(record.get(k, DEFAULTS.get(k)) for k in KEYS[kind]))


def merge_records(records: list[dict[str, Any]], path: Path = RESULTS) -> list[dict[str, Any]]:
    """Merge ``records`` (each with a ``kind`` in ``KEYS``) into the JSON list at ``path``; returns the list."""
    old = json.loads(path.read_text()) if path.exists() else []
    new_keys = {_key(r) for r in records}
    merged = [r for r in old if _key(r) not in new_keys] + list(records)
    merged.sort(key=lambda r: tuple(str(x) for x in _key(r)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=1) + "\n")
    os.replace(tmp, path)
    return merged
