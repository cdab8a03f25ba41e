"""Interaction files -> dense-id ``Interactions`` with a per-user train/valid/test split.

Files are CSV, TSV or Parquet with a header naming ``user_id`` and ``item_id`` (MMRec's ``userID`` / ``itemID``
too), optionally ``rating``, ``timestamp`` and a split column (``x_label`` or ``split``: 0/1/2 or
train/valid/test). IDs stay strings until :func:`build_interactions` maps them to dense ints.
Row numbers in error messages are file line numbers (the header is line 1).
"""
from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from functools import partial
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import Interactions
from .errors import DataError
from .parquet import as_text, is_parquet, read_parquet

SPLIT_NAMES = ("train", "valid", "test")
_COLUMNS = {
    "user": ("user_id", "userid"),
    "item": ("item_id", "itemid"),
    "rating": ("rating",),
    "timestamp": ("timestamp",),
    "split": ("x_label", "split"),
}
_SPLIT_VALUES = {"0": 0, "1": 1, "2": 2, "train": 0, "valid": 1, "val": 1, "validation": 1, "test": 2}
_EPS = 1e-9


@dataclass
class InteractionTable:
    """Raw rows of one interactions file: string ids plus optional columns, one entry per row."""

    path: str
    users: np.ndarray
    items: np.ndarray
    rows: np.ndarray
    ratings: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    splits: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.users)


def _sniff_sep(path: Path, first_line: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".inter", ".tab"):
        return "\t"
    if suffix == ".csv":
        return ","
    if "\t" in first_line:
        return "\t"
    if ";" in first_line and "," not in first_line:
        return ";"
    return ","


def _header_index(path: Path, header: list[str]) -> dict[str, int]:
    """Map each known column role to its position; RecBole-style ``name:token`` suffixes are ignored."""
    names = [h.strip().split(":")[0].lower() for h in header]
    found: dict[str, int] = {}
    for role, aliases in _COLUMNS.items():
        for alias in aliases:
            if alias in names:
                found[role] = names.index(alias)
                break
    missing = [_COLUMNS[r][0] for r in ("user", "item") if r not in found]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)} "
                              f"(header has: {', '.join(h.strip() for h in header) or 'nothing'})")
    return found


def _first_bad(path: Path, values: list[str], lines: np.ndarray, field: str, ok, what: str) -> DataError:
    """The error for the first value that ``ok`` rejects (error path only)."""
    for value, line in zip(values, lines):
        if not ok(value):
            return DataError(path, f"{what}: {value!r}", row=int(line), field=field)
    return DataError(path, what, field=field)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_time(text: str) -> bool:
    if _is_float(text):
        return True
    try:
        return "-" in text[1:] and not np.isnat(np.datetime64(text, "s"))
    except ValueError:
        return False


def _parse_timestamps(path: Path, values: list[str], lines: np.ndarray, field: str) -> np.ndarray:
    """Unix seconds (any number) or ISO dates (``2020-01-31``, ``2020-01-31T12:00``) -> float64 seconds."""
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError:
        pass
    text = np.asarray(values, dtype=str)
    if (np.char.find(text, "-") > 0).all():
        try:
            dates = text.astype("datetime64[s]")
        except ValueError:
            dates = None
        if dates is not None and not np.isnat(dates).any():
            return dates.astype(np.int64).astype(np.float64)
    raise _first_bad(path, values, lines, field, _is_time,
                     "timestamp is neither a number nor an ISO date") from None


def _read_rows(path: Path, sep: str | None) -> tuple[list[str], list[list[str]]]:
    """Header and rows as text: a Parquet table's columns and cells, or a CSV/TSV file's lines."""
    if is_parquet(path):
        columns, rows = read_parquet(path)
        return columns, [[as_text(row[c]) for c in columns] for row in rows]
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            first = f.readline()
            if not first.strip():
                raise DataError(path, "file is empty or starts with a blank line (a header naming "
                                      "user_id and item_id must come first)")
            f.seek(0)
            reader = csv.reader(f, delimiter=sep or _sniff_sep(path, first))
            return next(reader), list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"cannot read: {exc}") from exc


def load_interactions(path: str | Path, *, sep: str | None = None) -> InteractionTable:
    """Read a CSV/TSV (separator from the extension or the header when ``sep`` is None) or Parquet
    interactions file. For Parquet, row numbers count the table's rows from 2, as if it had a header line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found" if not path.exists() else "not a regular file")
    header, records = _read_rows(path, sep)
    cols = _header_index(path, header)
    names = {role: header[i].strip() for role, i in cols.items()}

    lengths = np.fromiter(map(len, records), dtype=np.int64, count=len(records))
    keep = lengths > 0  # blank lines
    lines = np.flatnonzero(keep) + 2
    if not keep.any():
        raise DataError(path, "no interactions (the file has a header only)")
    records = [r for r, k in zip(records, keep) if k]
    short = lengths[keep] <= max(cols.values())
    if short.any():
        pos = int(np.argmax(short))
        raise DataError(path, f"expected at least {max(cols.values()) + 1} fields, found "
                              f"{len(records[pos])}", row=int(lines[pos]))

    def column(role: str) -> list[str]:
        i = cols[role]
        return [r[i].strip() for r in records]

    ids = {}
    for role in ("user", "item"):
        values = np.asarray(column(role), dtype=str)
        empty = values == ""
        if empty.any():
            raise DataError(path, f"empty {role} id", row=int(lines[int(np.argmax(empty))]),
                            field=names[role])
        ids[role] = values

    table = InteractionTable(str(path), ids["user"], ids["item"], lines)
    if "rating" in cols:
        values = column("rating")
        try:
            table.ratings = np.asarray(values, dtype=np.float64)
        except ValueError:
            raise _first_bad(path, values, lines, names["rating"], _is_float,
                             "rating is not a number") from None
    if "timestamp" in cols:
        table.timestamps = _parse_timestamps(path, column("timestamp"), lines, names["timestamp"])
    if "split" in cols:
        values = [v.lower() for v in column("split")]
        uniq, inverse = np.unique(np.asarray(values, dtype=str), return_inverse=True)
        unknown = [u for u in uniq if u not in _SPLIT_VALUES]
        if unknown:
            bad = str(unknown[0])
            raise _first_bad(path, values, lines, names["split"], lambda v: v != bad,
                             "split is not 0/1/2 or train/valid/test")
        table.splits = np.array([_SPLIT_VALUES[u] for u in uniq], dtype=np.int8)[inverse]
    return table


def sorted_ids(values: np.ndarray) -> np.ndarray:
    """Distinct ids in a deterministic order: numeric when every id is an integer, else lexicographic."""
    uniq = np.unique(np.asarray(values, dtype=str))
    try:
        numbers = uniq.astype(np.int64)
    except (ValueError, OverflowError):
        return uniq
    return uniq[np.argsort(numbers, kind="stable")]


def lookup(vocab: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of each value in ``vocab`` (distinct strings), -1 where absent."""
    vocab = np.asarray(vocab, dtype=str)
    values = np.asarray(values, dtype=str)
    if len(vocab) == 0:
        return np.full(len(values), -1, dtype=np.int64)
    sorter = np.argsort(vocab, kind="stable")
    pos = np.clip(np.searchsorted(vocab, values, sorter=sorter), 0, len(vocab) - 1)
    found = vocab[sorter[pos]] == values
    return np.where(found, sorter[pos], -1).astype(np.int64)


def _split_counts(counts: np.ndarray, ratios: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-user split boundaries: ranks below ``b1`` train, below ``b2`` valid, the rest test.

    Cumulative floors (train = floor(0.8 n), valid = floor(0.9 n) - floor(0.8 n)), as in MMRec's data;
    every user keeps at least one training interaction.
    """
    b1 = np.maximum(np.floor(ratios[0] * counts + _EPS), 1).astype(np.int64)
    b2 = np.maximum(np.floor((ratios[0] + ratios[1]) * counts + _EPS).astype(np.int64), b1)
    return b1, b2


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3 or min(ratios) < 0 or ratios[0] <= 0 or abs(sum(ratios) - 1) > 1e-6:
        raise ValueError(f"ratios must be 3 non-negative numbers summing to 1 with train > 0, got {ratios}")
    return float(ratios[0]), float(ratios[1]), float(ratios[2])


def build_interactions(users: Sequence[str] | np.ndarray, items: Sequence[str] | np.ndarray, *,
                       splits: np.ndarray | None = None,
                       ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 2024,
                       timestamps: np.ndarray | None = None,
                       item_ids: Sequence[str] | None = None,
                       source: str | Path | Sequence[str | Path] | None = None,
                       rows: np.ndarray | None = None) -> Interactions:
    """Map string ids to dense ints, drop duplicate (user, item) pairs and split per user.

    Dense ids follow :func:`sorted_ids`; ``item_ids`` fixes the item order instead (e.g. a catalog's
    or feature rows'), and then any other item id is an error.
    With ``splits`` (0 train, 1 valid, 2 test per entry) the given split is kept; valid/test rows of a
    user (or, without ``item_ids``, an item) that never occurs in train are dropped, as the reference code
    does, with one :class:`UnseenInTrainingWarning` and their count in ``Interactions.dropped_unseen``
    (with ``item_ids``, an item without training rows stays: it is a known item, ranked like any other).
    Otherwise each user's
    interactions are split by ``ratios`` in time order (``timestamps``) or a ``seed``-ed shuffle.
    Duplicates keep the earliest occurrence (split, then time, then input order).
    ``source`` (one file, or one per split) and ``rows`` (per entry) only feed error messages.
    """
    users = np.asarray(users, dtype=str)
    items = np.asarray(items, dtype=str)
    n = len(users)
    if len(items) != n:
        raise ValueError(f"{n} users but {len(items)} items")
    rows = np.arange(1, n + 1) if rows is None else np.asarray(rows)
    labels = None if splits is None else np.asarray(splits, dtype=np.int64)
    where = partial(_where, source)
    _check_labels(labels, n, rows, where)

    in_train = np.ones(n, dtype=bool) if labels is None else labels == 0
    user_vocab, item_vocab = sorted_ids(users[in_train]), _item_vocabulary(items[in_train], item_ids)
    u, i = lookup(user_vocab, users), lookup(item_vocab, items)
    dropped = 0
    if labels is not None:
        unseen = _unseen_rows(users, items, u, i, labels, fixed_items=item_ids is not None, where=where)
        dropped = int(unseen.sum())
        if dropped:
            keep = ~unseen
            u, i, items, labels, rows = u[keep], i[keep], items[keep], labels[keep], rows[keep]
            timestamps = None if timestamps is None else np.asarray(timestamps)[keep]
    if (i < 0).any():  # only an item outside the given item list can be left unknown here
        pos = int(np.argmax(i < 0))
        raise DataError(where(0 if labels is None else int(labels[pos])),
                        f"item id {str(items[pos])!r} is not in the given item list ({len(item_vocab)} items)",
                        row=int(rows[pos]))
    n_users, n_items = len(user_vocab), len(item_vocab)
    keep = _first_of_each_pair(u, i, n_items, timestamps, labels)
    u, i = u[keep], i[keep]
    pairs = np.stack([u, i], axis=1).astype(np.int64)
    if labels is not None:
        label = labels[keep]
    else:
        tie = np.asarray(timestamps, dtype=np.float64)[keep] if timestamps is not None else None
        pairs, label = _split_by_ratios(pairs, n_users, tie, _check_ratios(ratios), seed)
    return Interactions(n_users=n_users, n_items=n_items,
                        train=pairs[label == 0], valid=pairs[label == 1], test=pairs[label == 2],
                        user_ids=user_vocab.tolist(), item_ids=item_vocab.tolist(), dropped_unseen=dropped)


def _where(source: str | Path | Sequence[str | Path] | None, label: int) -> str | None:
    """The file an entry of split ``label`` came from, for error messages."""
    if isinstance(source, (list, tuple)):
        return str(source[label])
    return None if source is None else str(source)


def _check_labels(labels: np.ndarray | None, n: int, rows: np.ndarray, where) -> None:
    """Split labels are 0, 1 or 2, and the training split is not empty."""
    if labels is not None and n and (labels.min() < 0 or labels.max() > 2):
        pos = int(np.argmax((labels < 0) | (labels > 2)))
        raise DataError(where(0), f"split label {labels[pos]} is not 0, 1 or 2", row=int(rows[pos]))
    if n == 0 or (labels is not None and not (labels == 0).any()):
        raise DataError(where(0), "the training split is empty")


def _item_vocabulary(train_items: np.ndarray, item_ids: Sequence[str] | None) -> np.ndarray:
    """The item order: ``item_ids`` when given (checked to be unique), else the training items sorted."""
    if item_ids is None:
        return sorted_ids(train_items)
    item_vocab = np.asarray([str(i) for i in item_ids], dtype=str)
    if len(np.unique(item_vocab)) != len(item_vocab):
        raise ValueError("item_ids contains duplicates")
    return item_vocab


def _unseen_rows(users: np.ndarray, items: np.ndarray, u: np.ndarray, i: np.ndarray, labels: np.ndarray, *,
                 fixed_items: bool, where) -> np.ndarray:
    """Valid/test rows whose user (or, without a fixed item list, item) never occurs in train; warns once
    (pointing at the caller of :func:`build_interactions`) when there are any."""
    in_train = labels == 0
    new_user = ~in_train & (u < 0)
    new_item = ~in_train & (i < 0) if not fixed_items else np.zeros(len(u), dtype=bool)
    unseen = new_user | new_item
    if unseen.any():
        warnings.warn(_unseen_message(labels, unseen, len(np.unique(users[new_user])),
                                      len(np.unique(items[new_item])), where),
                      UnseenInTrainingWarning, stacklevel=3)
    return unseen


def _first_of_each_pair(u: np.ndarray, i: np.ndarray, n_items: int, timestamps: np.ndarray | None,
                        labels: np.ndarray | None) -> np.ndarray:
    """Positions (sorted) of each (user, item) pair's first entry by (split, time, input position)."""
    keys = [np.arange(len(u))]
    if timestamps is not None:
        keys.append(np.asarray(timestamps, dtype=np.float64))
    if labels is not None:
        keys.append(labels)
    order = np.lexsort(keys)
    _, first = np.unique((u * n_items + i)[order], return_index=True)
    return np.sort(order[first])


def _split_by_ratios(pairs: np.ndarray, n_users: int, tie: np.ndarray | None, ratios: tuple[float, float, float],
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's pairs in time order (``tie``; None: a ``seed``-ed shuffle) split by ``ratios``: the pairs
    in that order and their split labels."""
    u = pairs[:, 0]
    m = len(pairs)
    tie = np.random.default_rng(seed).random(m) if tie is None else tie
    order = np.lexsort((np.arange(m), tie, u))
    counts = np.bincount(u, minlength=n_users)
    starts = np.cumsum(counts) - counts
    u_sorted = u[order]
    rank = np.arange(m) - starts[u_sorted]
    b1, b2 = _split_counts(counts[u_sorted], ratios)
    return pairs[order], np.where(rank < b1, 0, np.where(rank < b2, 1, 2))


class UnseenInTrainingWarning(UserWarning):
    """Validation/test rows of users (or items) that never occur in the training split were dropped."""


def _unseen_message(labels: np.ndarray, unseen: np.ndarray, n_users: int, n_items: int, where) -> str:
    """One line: how many valid/test rows were dropped, per split, and of how many unseen users and items."""
    per_split = ", ".join(f"{int((unseen & (labels == k)).sum())} {SPLIT_NAMES[k]}" for k in (1, 2)
                          if (unseen & (labels == k)).any())
    files = sorted({str(where(int(k))) for k in np.unique(labels[unseen]) if where(int(k)) is not None})
    whose = " and ".join(f"{count} {kind}(s)" for count, kind in ((n_users, "user"), (n_items, "item")) if count)
    return (f"{', '.join(files) + ': ' if files else ''}dropped {int(unseen.sum())} validation/test rows "
            f"({per_split}): {whose} that never occur in the training split, as the reference code does")


def read_interactions(path: str | Path, *, ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 2024,
                      item_ids: Sequence[str] | None = None, sep: str | None = None) -> Interactions:
    """Load one interactions file and build ``Interactions`` (its split column is used when present)."""
    table = load_interactions(path, sep=sep)
    return build_interactions(table.users, table.items, splits=table.splits, ratios=ratios, seed=seed,
                              timestamps=table.timestamps, item_ids=item_ids, source=table.path,
                              rows=table.rows)


def load_split_files(train: str | Path, valid: str | Path, test: str | Path, *,
                     item_ids: Sequence[str] | None = None, sep: str | None = None) -> Interactions:
    """Build ``Interactions`` from three files holding the train, valid and test splits."""
    tables = [load_interactions(p, sep=sep) for p in (train, valid, test)]
    return build_interactions(
        np.concatenate([t.users for t in tables]), np.concatenate([t.items for t in tables]),
        splits=np.repeat(np.arange(3), [len(t) for t in tables]),
        timestamps=(np.concatenate([t.timestamps for t in tables])
                    if all(t.timestamps is not None for t in tables) else None),
        item_ids=item_ids, source=[t.path for t in tables],
        rows=np.concatenate([t.rows for t in tables]))
