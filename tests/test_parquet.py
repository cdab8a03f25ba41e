"""Parquet catalogs and interactions: read like their CSV twins; a clear message without pyarrow."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from dgmrec_core.errors import DataError
from dgmrec_core.interactions import load_interactions
from retrieval.catalog import load_catalog
from test_engine import make_shop


def _csv_to_parquet(src: Path, dst: Path, types: dict[str, str] | None = None) -> Path:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = {}
    for name in rows[0]:
        values = [r[name] if r[name] != "" else None for r in rows]
        if (types or {}).get(name) == "int":
            values = [int(v) for v in values]
        columns[name] = values
    pq.write_table(pa.table(columns), dst)
    return dst


def test_parquet_catalog_round_trips(tmp_path: Path) -> None:
    catalog_csv, _ = make_shop(tmp_path / "shop", n_items=24)
    parquet = _csv_to_parquet(catalog_csv, tmp_path / "shop" / "catalog.parquet")
    a, _ = load_catalog(catalog_csv)
    b, problems = load_catalog(parquet)
    assert problems == []
    assert b.item_ids == a.item_ids and b.texts == a.texts and b.image_paths == a.image_paths
    assert b.extra == a.extra and b.source == parquet.resolve()


def test_parquet_interactions_match_csv(tmp_path: Path) -> None:
    _, inter_csv = make_shop(tmp_path / "shop", n_items=24)
    parquet = _csv_to_parquet(inter_csv, tmp_path / "inter.parquet", {"timestamp": "int"})
    a, b = load_interactions(inter_csv), load_interactions(parquet)
    assert np.array_equal(a.users, b.users) and np.array_equal(a.items, b.items)
    assert np.array_equal(a.timestamps, b.timestamps) and np.array_equal(a.rows, b.rows)


def test_parquet_problems_name_the_row(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"item_id": ["a", "a"], "text": ["x", "y"], "image": [None, None]}), tmp_path / "c.parquet")
    with pytest.raises(DataError, match="line 3.*duplicate item_id"):
        load_catalog(tmp_path / "c.parquet")
    pq.write_table(pa.table({"user_id": pa.array([], pa.string()), "item_id": pa.array([], pa.string())}),
                   tmp_path / "i.parquet")
    with pytest.raises(DataError, match="header only"):
        load_interactions(tmp_path / "i.parquet")


def test_parquet_without_pyarrow_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.parquet"
    path.write_bytes(b"PAR1 not really")
    for name in ("pyarrow", "pyarrow.parquet", "pandas"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    for load in (load_catalog, load_interactions):
        with pytest.raises(DataError, match=r"needs pyarrow.*dgmrec-search\[parquet\]"):
            load(path)
