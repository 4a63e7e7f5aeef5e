"""RecBole atomic-format loading and the three train/valid/test split protocols.

Files: ``{name}.inter`` (required; fields ``user_id:token``, ``item_id:token`` and optionally
``timestamp:float``), ``{name}.user`` and ``{name}.item`` (optional; keyed by ``user_id`` and
``item_id``). The first line is a tab-separated ``name:type`` header; empty lines are skipped;
a line with too few fields is padded with missing values, one with too many is cut (both
logged). Every row of the ``.inter`` file is one positive interaction, whatever its rating.

Splits return row indices into :class:`Interactions` (row == data line order). User ids sort
as Python strings (code point order). ``rng`` is ``np.random.default_rng(seed)``.

- ``leave-last-out``: per user, order the rows by (timestamp, line order); the last goes to
  test, the second last to valid, the rest to train. A user with 1 row: train only; with 2
  rows: train + test.
- ``random-811``: for each user in ascending id order, take the user's rows in line order and
  permute them with ``rng.permutation``. With ``n`` rows and ``n >= 3``,
  ``n_valid = n_test = max(1, n // 10)``: the first ``n - n_valid - n_test`` permuted rows go
  to train, the next ``n_valid`` to valid, the last ``n_test`` to test; ``n < 3``: all train.
- ``cold-users``: ``rng.choice(sorted_user_ids, size=round(n_users / 10), replace=False)``
  (Python ``round``, half to even) are held out: all their rows go to test. For every other
  user, the row leave-last-out would put in test goes to valid and the rest to train (so a
  user with 1 row is train only); no warm row is in test.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
PROTOCOLS = ("leave-last-out", "random-811", "cold-users")
_TRAIN, _VALID, _TEST = 0, 1, 2


class DatasetFormatError(ValueError):
    """An atomic file is malformed in a way the loader cannot tolerate."""


class DatasetMissingError(FileNotFoundError):
    """A required dataset file or directory does not exist."""


@dataclass(frozen=True)
class AtomicTable:
    """One RecBole atomic file: typed columns, one row per data line, file order kept."""

    fields: dict[str, str]
    columns: dict[str, list]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def index(self, key_field: str) -> dict[str, int]:
        """Map each external id in the token column ``key_field`` to its row."""
        if self.fields.get(key_field) != "token":
            raise KeyError(f"{key_field!r} is not a token field; fields are {self.fields}")
        ids = self.columns[key_field]
        rows = {key: row for row, key in enumerate(ids)}
        if len(rows) != len(ids):
            raise DatasetFormatError(f"{key_field!r} has duplicate ids; make each id appear once")
        return rows


@dataclass(frozen=True, eq=False)
class Interactions:
    """Interactions in ``.inter`` line order: ``user_ids``/``item_ids`` [n] object (str),
    ``timestamps`` [n] float64."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray
    # every other ``:float`` field (e.g. ``rating``), float64 [n], NaN where not a number
    numbers: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.user_ids)


@dataclass(frozen=True)
class RawDataset:
    """A loaded dataset; ``fingerprint`` is the sha256 of the files read (see load_dataset)."""

    name: str
    interactions: Interactions
    users: AtomicTable | None
    items: AtomicTable | None
    fingerprint: str


@dataclass(frozen=True, eq=False)
class Split:
    """Row indices (int64, ascending) per part; ``cold_users`` [c] object, sorted."""

    protocol: str
    seed: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    cold_users: np.ndarray

    def fingerprint(self) -> str:
        """sha256 of ``f"{protocol}\\n{seed}\\n"``, then per part (train, valid, test) its
        length as 8-byte little-endian followed by its rows as little-endian int64."""
        digest = hashlib.sha256(f"{self.protocol}\n{self.seed}\n".encode())
        for rows in (self.train, self.valid, self.test):
            digest.update(len(rows).to_bytes(8, "little"))
            digest.update(np.ascontiguousarray(rows, dtype="<i8").tobytes())
        return digest.hexdigest()


def read_atomic(path: Path) -> AtomicTable:
    """Read one atomic file into typed columns (see the module docstring for tolerance)."""
    with _gc_paused():
        return _table(_read_bytes(path), path)


def load_dataset(directory: Path, name: str | None = None) -> RawDataset:
    """Load ``{name}.inter`` and, where present, ``{name}.user`` / ``{name}.item``.

    ``name`` defaults to the directory name. The fingerprint is sha256 over, per file read in
    the order inter, user, item: its file name, a NUL byte, then its bytes.
    """
    directory = Path(directory)
    name = name or directory.name
    inter_path = directory / f"{name}.inter"
    if not inter_path.is_file():
        raise DatasetMissingError(
            f"{inter_path} not found: put RecBole atomic files {name}.inter (and optionally "
            f".user/.item) there, e.g. with models.fetch.fetch_movielens_100k or "
            f"models.synth.write_synthetic"
        )
    with _gc_paused():
        return _load(directory, name, inter_path)


def _load(directory: Path, name: str, inter_path: Path) -> RawDataset:
    digest = hashlib.sha256()
    raw = _read_bytes(inter_path)
    digest.update(inter_path.name.encode() + b"\0" + raw)
    interactions = _interactions(*_read_raw_columns(raw, inter_path), inter_path)
    tables: dict[str, AtomicTable | None] = {"user": None, "item": None}
    for suffix in tables:
        path = directory / f"{name}.{suffix}"
        if path.is_file():
            raw = _read_bytes(path)
            digest.update(path.name.encode() + b"\0" + raw)
            tables[suffix] = _table(raw, path, key=f"{suffix}_id")
    logger.info("loaded %s: %d interactions from %s", name, len(interactions), directory)
    return RawDataset(name, interactions, tables["user"], tables["item"], digest.hexdigest())


def make_split(interactions: Interactions, protocol: str, seed: int = 0) -> Split:
    """Split ``interactions`` by ``protocol`` (one of PROTOCOLS; see the module docstring)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown split protocol {protocol!r}; use one of {PROTOCOLS}")
    if not np.isfinite(interactions.timestamps).all():
        raise ValueError("interactions have non-finite timestamps; fix or drop those rows")
    users, codes = _user_codes(interactions.user_ids)
    counts = np.bincount(codes, minlength=len(users))
    cold_users = np.empty(0, dtype=object)
    rng = np.random.default_rng(seed)
    if protocol == "random-811":
        labels = _random_811(codes, counts, rng)
    else:
        labels = _leave_last_out(codes, counts, interactions.timestamps)
    if protocol == "cold-users":
        # Equivalent to rng.choice(users, ...): Generator.choice draws indices, then takes them.
        cold = np.sort(rng.choice(len(users), size=round(len(users) / 10), replace=False))
        labels = np.where(labels == _VALID, _TRAIN, np.where(labels == _TEST, _VALID, labels))
        is_cold = np.zeros(len(users), dtype=bool)
        is_cold[cold] = True
        labels[is_cold[codes]] = _TEST
        cold_users = users[cold]
    train, valid, test = (np.flatnonzero(labels == part) for part in (_TRAIN, _VALID, _TEST))
    return Split(protocol, seed, train, valid, test, cold_users)


def _user_codes(user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (users [u] object sorted ascending, codes [n] int64 indexing ``users``).

    Groups rows by string hash with one numeric sort, then checks every row equals its
    group's representative; only a hash collision takes the slower dict path.
    """
    listed = user_ids.tolist()
    hashes = np.fromiter(map(hash, listed), dtype=np.int64, count=len(listed))
    order = np.argsort(hashes)
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = hashes[order[1:]] != hashes[order[:-1]]
    codes = np.empty(len(order), dtype=np.int64)
    codes[order] = np.cumsum(starts) - 1
    users = user_ids[order[starts]]
    if not np.array_equal(user_ids, users[codes]):
        index: dict[str, int] = {}
        codes = np.fromiter((index.setdefault(user, len(index)) for user in listed), np.int64)
        users = np.array(list(index), dtype=object)
    # NumPy's unicode order is Python's for ids without trailing NUL characters.
    by_id = np.argsort(users.astype(str), kind="stable")
    rank = np.empty(len(users), dtype=np.int64)
    rank[by_id] = np.arange(len(users))
    return users[by_id], rank[codes]


def _leave_last_out(codes: np.ndarray, counts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Labels [n] int8 per leave-last-out."""
    labels = np.full(len(codes), _TRAIN, dtype=np.int8)
    labels[_latest(codes, times, labels == _TRAIN)[counts >= 2]] = _TEST
    labels[_latest(codes, times, labels == _TRAIN)[counts >= 3]] = _VALID
    return labels


def _latest(codes: np.ndarray, times: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[u] the row with the largest (time, line) per user among rows in ``mask``; -1 if none.

    Two unbuffered maxima instead of a sort: O(n) and time ties go to the later line.
    """
    n_users = int(codes.max()) + 1 if len(codes) else 0
    rows = np.flatnonzero(mask)
    latest = np.full(n_users, -np.inf)
    np.maximum.at(latest, codes[rows], times[rows])
    rows = rows[times[rows] == latest[codes[rows]]]
    last = np.full(n_users, -1, dtype=np.int64)
    np.maximum.at(last, codes[rows], rows)
    return last


def _random_811(codes: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels [n] int8 per random-811."""
    block_start = np.repeat(np.cumsum(counts) - counts, counts)  # per row in user order
    within = np.zeros(len(codes), dtype=np.int64)
    multi = counts > 1
    if multi.any():
        # rng.permutation(1) draws nothing, so skipping single-row users keeps the stream;
        # rows[rng.permutation(len(rows))] equals rng.permutation(rows) for 1-d int rows.
        perms = [rng.permutation(count) for count in counts[multi].tolist()]
        within[np.repeat(multi, counts)] = np.concatenate(perms)
    order = np.argsort(codes, kind="stable")[block_start + within]
    held = np.where(counts >= 3, np.maximum(1, counts // 10), 0)
    position = np.arange(len(codes)) - block_start
    train_end = np.repeat(counts - 2 * held, counts)
    labels = np.empty(len(codes), dtype=np.int8)
    labels[order] = (position >= train_end).astype(np.int8) + (
        position >= train_end + np.repeat(held, counts)
    )
    return labels


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: millions of new small lists would trigger it over and over."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise DatasetMissingError(f"{path} not found: check the dataset directory") from exc


def _read_raw_columns(raw: bytes, path: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Decode and split one atomic file into its header and per-field string columns."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        logger.warning("%s is not UTF-8; decoding it as latin-1", path)
        text = raw.decode("latin-1")
    lines = (text.replace("\r\n", "\n") if "\r" in text else text).split("\n")
    fields: dict[str, str] = {}
    for cell in lines[0].lstrip("\ufeff").split("\t"):
        field, _, kind = cell.strip().rpartition(":")
        if not field or kind not in FIELD_TYPES or field in fields:
            raise DatasetFormatError(
                f"{path}: bad header cell {cell!r}; the first line must be tab-separated "
                f"unique 'name:type' cells with type in {FIELD_TYPES}"
            )
        fields[field] = kind
    body = [line for line in lines[1:] if line]
    width = len(fields)
    tabs = np.fromiter(map(str.count, body, repeat("\t")), dtype=np.int64, count=len(body))
    ragged = np.flatnonzero(tabs != width - 1)
    for row in ragged.tolist():
        cells = body[row].split("\t")
        body[row] = "\t".join((cells + [""] * width)[:width])
    if len(ragged):
        first, count = ragged[0] + 1, len(ragged)
        logger.warning(
            "%s: %d data lines (first: %d) padded or cut to %d fields", path, count, first, width
        )
    cells = "\t".join(body).split("\t") if body else []
    return fields, {field: cells[j::width] for j, field in enumerate(fields)}


def _table(raw: bytes, path: Path, key: str | None = None) -> AtomicTable:
    fields, columns = _read_raw_columns(raw, path)
    if key is not None and fields.get(key) != "token":
        raise DatasetFormatError(f"{path}: header needs a '{key}:token' field")
    return AtomicTable(
        fields, {field: _typed(column, fields[field]) for field, column in columns.items()}
    )


def _typed(values: list[str], kind: str) -> list:
    """Convert one raw column to its type; unparsable floats become NaN."""
    if kind == "token":
        return values
    if kind == "token_seq":
        return [value.split() for value in values]
    if kind == "float":
        return _floats(values).tolist()
    return [_floats(value.split()).tolist() for value in values]


def _floats(values: list[str]) -> np.ndarray:
    """[n] float64 from strings, NaN where a value is not a number (e.g. "unkonwn", "")."""
    try:
        return np.array(values, dtype=np.float64)
    except ValueError:
        return np.array([_float_or_nan(value) for value in values], dtype=np.float64)


def _float_or_nan(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.nan


def _interactions(
    fields: dict[str, str], columns: dict[str, list[str]], path: Path
) -> Interactions:
    for key in ("user_id", "item_id"):
        if fields.get(key) != "token":
            raise DatasetFormatError(f"{path}: header needs a '{key}:token' field")
        if "" in columns[key]:
            raise DatasetFormatError(
                f"{path}: {columns[key].count('')} data lines (first: data line "
                f"{columns[key].index('') + 1}) have an empty {key}; fix or remove them"
            )
    n = len(columns["user_id"])
    timestamps = np.zeros(n)
    if "timestamp" in fields:
        timestamps = _floats(columns["timestamp"])
        bad = np.flatnonzero(~np.isfinite(timestamps))
        if len(bad):
            raise DatasetFormatError(
                f"{path}: {len(bad)} data lines (first: data line {bad[0] + 1}) have a "
                "timestamp that is not a finite number; fix or remove them"
            )
    else:
        logger.info("%s has no timestamp field; leave-last-out falls back to line order", path)
    numbers = {
        name: _floats(columns[name])
        for name, kind in fields.items()
        if kind == "float" and name != "timestamp"
    }
    return Interactions(
        np.array(columns["user_id"], dtype=object),
        np.array(columns["item_id"], dtype=object),
        timestamps,
        numbers,
    )
