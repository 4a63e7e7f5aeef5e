"""Atomic-file reading, dataset loading and the split protocols against hand-computed rows."""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.data import (
    PROTOCOLS,
    DatasetFormatError,
    DatasetMissingError,
    Interactions,
    load_dataset,
    make_split,
    read_atomic,
)

# Row: user, item, rating, timestamp. User ids sort as strings: u1 < u10 < u2 < u3.
#   u1:  rows 0 (t=10), 2 (t=30), 4 (t=20), 7 (t=30) -> by (t, line): 0, 4, 2, 7
#   u2:  row 1                                        -> one row: train
#   u3:  rows 3 (t=5), 6 (t=6)                        -> two rows: train 3, test 6
#   u10: rows 5 (t=7), 8 (t=9), 9 (t=8)               -> by time: 5, 9, 8
INTER = """user_id:token\titem_id:token\trating:float\ttimestamp:float
u1\ti1\t5\t10
u2\ti2\t3\t50
u1\ti2\t4\t30
u3\ti1\t1\t5
u1\ti3\t2\t20
u10\ti1\t3\t7
u3\ti2\t4\t6
u1\ti4\t5\t30
u10\ti2\t3\t9
u10\ti3\t4\t8
"""
USER = "user_id:token\tage:token\nu1\t20\nu2\t21\nu3\t22\nu10\t23\n"
ITEM = """item_id:token\tmovie_title:token_seq\trelease_year:float\tclass:token_seq
i1\tToy Story\t1995\tAnimation Comedy
i2\tunkonwn\tunkonwn\tunknown
i3\tLand Before Time III\tV\tAnimation
i4\tNo Year\t\tDrama
"""


def write(directory: Path, name: str, **files: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for suffix, text in files.items():
        (directory / f"{name}.{suffix}").write_text(text, encoding="utf-8")
    return directory


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write(tmp_path / "tiny", "tiny", inter=INTER, user=USER, item=ITEM)


def random_interactions(n: int, n_users: int, seed: int) -> Interactions:
    """[n] rows in random line order; some users get 1 or 2 rows, timestamps have ties."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n)
    users[: n_users // 2] = np.arange(n_users // 2)  # make sure small users exist too
    user_ids = np.array([f"user{u}" for u in users], dtype=object)
    item_ids = np.array([f"item{i}" for i in rng.integers(0, 50, n)], dtype=object)
    return Interactions(user_ids, item_ids, rng.integers(0, 20, n).astype(np.float64))


def test_read_atomic_types_columns_and_turns_dirty_floats_into_nan(tiny: Path) -> None:
    table = read_atomic(tiny / "tiny.item")
    assert table.fields == {
        "item_id": "token",
        "movie_title": "token_seq",
        "release_year": "float",
        "class": "token_seq",
    }
    assert len(table) == 4
    assert table.columns["item_id"] == ["i1", "i2", "i3", "i4"]
    assert table.columns["movie_title"][0] == ["Toy", "Story"]
    assert table.columns["class"][0] == ["Animation", "Comedy"]
    years = table.columns["release_year"]
    assert years[0] == 1995.0
    assert all(math.isnan(year) for year in years[1:])  # "unkonwn", "V" and ""
    assert table.index("item_id") == {"i1": 0, "i2": 1, "i3": 2, "i4": 3}


def test_read_atomic_parses_float_seq_with_nan_for_dirty_entries(tmp_path: Path) -> None:
    path = tmp_path / "x.item"
    path.write_text("item_id:token\tscores:float_seq\na\t1.5 2 x\nb\t\n", encoding="utf-8")
    scores = read_atomic(path).columns["scores"]
    assert scores[0][:2] == [1.5, 2.0] and math.isnan(scores[0][2])
    assert scores[1] == []


def test_read_atomic_pads_short_lines_cuts_long_ones_and_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "x.item"
    text = "item_id:token\tyear:float\ttags:token_seq\na\t1\tx y\nb\nc\t3\tz\textra\n"
    path.write_text(text, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="models.data"):
        table = read_atomic(path)
    assert table.columns["item_id"] == ["a", "b", "c"]
    assert math.isnan(table.columns["year"][1]) and table.columns["year"][2] == 3.0
    assert table.columns["tags"] == [["x", "y"], [], ["z"]]
    assert "2 data lines" in caplog.text


def test_read_atomic_accepts_crlf_and_skips_empty_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.user"
    path.write_bytes(b"user_id:token\tage:float\r\n1\t20\r\n\r\n2\t30\r\n")
    table = read_atomic(path)
    assert table.columns == {"user_id": ["1", "2"], "age": [20.0, 30.0]}


@pytest.mark.parametrize(
    "header", ["user_id\tage:float", "user_id:token\tage:int", "a:token\ta:float"]
)
def test_read_atomic_rejects_a_bad_header_naming_the_file(tmp_path: Path, header: str) -> None:
    path = tmp_path / "bad.user"
    path.write_text(header + "\n1\t2\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match="bad.user"):
        read_atomic(path)


def test_read_atomic_raises_missing_error_for_an_absent_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match="nope.item") as caught:
        read_atomic(tmp_path / "nope.item")
    assert isinstance(caught.value, FileNotFoundError)


def test_index_rejects_duplicate_ids_and_non_token_fields(tmp_path: Path) -> None:
    path = tmp_path / "x.user"
    path.write_text("user_id:token\tage:float\n1\t20\n1\t30\n", encoding="utf-8")
    table = read_atomic(path)
    with pytest.raises(DatasetFormatError, match="duplicate"):
        table.index("user_id")
    with pytest.raises(KeyError):
        table.index("age")


def test_load_dataset_keeps_line_order_and_reads_optional_tables(tiny: Path) -> None:
    dataset = load_dataset(tiny)
    inter = dataset.interactions
    assert dataset.name == "tiny" and len(inter) == 10
    assert inter.user_ids.dtype == object and inter.timestamps.dtype == np.float64
    assert inter.user_ids.tolist()[:3] == ["u1", "u2", "u1"]
    assert inter.item_ids.tolist()[-1] == "i3"
    assert inter.timestamps.tolist()[:3] == [10.0, 50.0, 30.0]
    assert dataset.users is not None and dataset.users.index("user_id")["u10"] == 3
    assert dataset.items is not None and len(dataset.items) == 4


def test_load_dataset_without_user_and_item_files_has_no_tables(tmp_path: Path) -> None:
    dataset = load_dataset(write(tmp_path / "d", "other", inter=INTER), name="other")
    assert dataset.users is None and dataset.items is None


def test_fingerprint_follows_file_bytes_not_location(tiny: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "tiny"
    shutil.copytree(tiny, copy)
    assert load_dataset(copy).fingerprint == load_dataset(tiny).fingerprint
    (copy / "tiny.user").write_text(USER.replace("\t20", "\t21"), encoding="utf-8")
    assert load_dataset(copy).fingerprint != load_dataset(tiny).fingerprint


def test_load_dataset_names_the_missing_inter_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match=r"empty\.inter"):
        load_dataset(tmp_path / "empty")


@pytest.mark.parametrize(
    ("inter", "message"),
    [
        ("user:token\titem_id:token\n1\t2\n", "user_id:token"),
        ("user_id:token\titem_id:token\n1\t2\n\t3\n", "empty user_id"),
        ("user_id:token\titem_id:token\ttimestamp:float\n1\t2\t5\n1\t3\tsoon\n", "data line 2"),
    ],
)
def test_load_dataset_rejects_unusable_interactions(
    tmp_path: Path, inter: str, message: str
) -> None:
    with pytest.raises(DatasetFormatError, match=message):
        load_dataset(write(tmp_path / "d", "d", inter=inter))


def test_leave_last_out_puts_each_users_latest_interaction_in_test(tiny: Path) -> None:
    split = make_split(load_dataset(tiny).interactions, "leave-last-out")
    assert split.train.tolist() == [0, 1, 3, 4, 5]
    assert split.valid.tolist() == [2, 9]
    assert split.test.tolist() == [6, 7, 8]  # u1's t=30 tie goes to the later line, 7


def test_leave_last_out_breaks_ties_by_line_order_when_there_are_no_timestamps(
    tmp_path: Path,
) -> None:
    directory = write(tmp_path / "d", "d", inter="user_id:token\titem_id:token\n" + "a\tx\n" * 4)
    split = make_split(load_dataset(directory).interactions, "leave-last-out")
    assert (split.train.tolist(), split.valid.tolist(), split.test.tolist()) == ([0, 1], [2], [3])


def random_811_reference(interactions: Interactions, seed: int) -> tuple[list, list, list]:
    """The random-811 definition written out literally, one user at a time."""
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for user in sorted(set(interactions.user_ids.tolist())):
        rows = rng.permutation(np.flatnonzero(interactions.user_ids == user))
        n = len(rows)
        held = max(1, math.floor(0.1 * n)) if n >= 3 else 0
        parts[0].extend(rows[: n - 2 * held])
        parts[1].extend(rows[n - 2 * held : n - held])
        parts[2].extend(rows[n - held :])
    return tuple(sorted(int(row) for row in part) for part in parts)  # type: ignore[return-value]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_random_811_matches_the_literal_per_user_permutation_definition(seed: int) -> None:
    interactions = random_interactions(3000, 120, seed)
    split = make_split(interactions, "random-811", seed)
    expected = random_811_reference(interactions, seed)
    assert (split.train.tolist(), split.valid.tolist(), split.test.tolist()) == expected


def test_random_811_holds_out_a_tenth_per_user_and_keeps_small_users_in_train() -> None:
    # 1, 2, 3 and 25 rows: held = 0, 0, 1, max(1, 25 // 10) = 2 for valid and for test each.
    users = ["a"] + ["b"] * 2 + ["c"] * 3 + ["d"] * 25
    interactions = Interactions(
        np.array(users, dtype=object), np.array(users, dtype=object), np.zeros(31)
    )
    split = make_split(interactions, "random-811", seed=3)
    per_part = [
        np.unique(interactions.user_ids[rows], return_counts=True)
        for rows in (split.train, split.valid, split.test)
    ]
    assert {u: c for u, c in zip(*per_part[0], strict=True)} == {"a": 1, "b": 2, "c": 1, "d": 21}
    assert {u: c for u, c in zip(*per_part[1], strict=True)} == {"c": 1, "d": 2}
    assert {u: c for u, c in zip(*per_part[2], strict=True)} == {"c": 1, "d": 2}


def test_cold_users_holds_out_a_tenth_of_users_entirely() -> None:
    interactions = random_interactions(2000, 95, seed=4)
    split = make_split(interactions, "cold-users", seed=5)
    users = sorted(set(interactions.user_ids.tolist()))
    expected = np.random.default_rng(5).choice(
        np.array(users, dtype=object), size=round(len(users) / 10), replace=False
    )
    assert split.cold_users.tolist() == sorted(expected.tolist())
    cold = np.isin(interactions.user_ids, split.cold_users)
    assert split.test.tolist() == np.flatnonzero(cold).tolist()
    warm = make_split(interactions, "leave-last-out")
    assert split.valid.tolist() == [row for row in warm.test.tolist() if not cold[row]]


def test_cold_users_keeps_a_single_row_user_in_train(tiny: Path) -> None:
    split = make_split(load_dataset(tiny).interactions, "cold-users", seed=0)
    assert split.cold_users.tolist() == []  # round(4 / 10) == 0
    assert split.train.tolist() == [0, 1, 2, 3, 4, 5, 9] and split.valid.tolist() == [6, 7, 8]
    assert split.test.tolist() == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_protocol_partitions_all_rows_into_sorted_int64_parts(protocol: str) -> None:
    interactions = random_interactions(1500, 80, seed=2)
    split = make_split(interactions, protocol, seed=2)
    parts = (split.train, split.valid, split.test)
    assert all(part.dtype == np.int64 and np.all(np.diff(part) > 0) for part in parts)
    assert np.sort(np.concatenate(parts)).tolist() == list(range(len(interactions)))


@pytest.mark.parametrize("protocol", ["random-811", "cold-users"])
def test_same_seed_gives_the_same_split_and_another_seed_a_different_one(protocol: str) -> None:
    interactions = random_interactions(1500, 80, seed=2)
    first, again = (make_split(interactions, protocol, seed=11) for _ in range(2))
    other = make_split(interactions, protocol, seed=12)
    assert first.fingerprint() == again.fingerprint()
    assert first.test.tolist() == again.test.tolist()
    assert first.test.tolist() != other.test.tolist()


def test_split_fingerprint_is_sha256_over_protocol_seed_and_index_arrays(tiny: Path) -> None:
    split = make_split(load_dataset(tiny).interactions, "leave-last-out", seed=4)
    digest = hashlib.sha256(b"leave-last-out\n4\n")
    for rows in ([0, 1, 3, 4, 5], [2, 9], [6, 7, 8]):
        digest.update(len(rows).to_bytes(8, "little") + np.array(rows, dtype="<i8").tobytes())
    assert split.fingerprint() == digest.hexdigest()
    assert (
        make_split(load_dataset(tiny).interactions, "leave-last-out", seed=5).fingerprint()
        != split.fingerprint()
    )


def test_make_split_rejects_an_unknown_protocol(tiny: Path) -> None:
    with pytest.raises(ValueError, match="leave-last-out"):
        make_split(load_dataset(tiny).interactions, "temporal")


def test_splits_stay_exact_when_user_id_hashes_collide(monkeypatch: pytest.MonkeyPatch) -> None:
    import models.data

    interactions = random_interactions(1500, 80, seed=2)
    expected = {p: make_split(interactions, p, seed=1).fingerprint() for p in PROTOCOLS}
    monkeypatch.setattr(models.data, "hash", lambda _: 0, raising=False)
    assert {p: make_split(interactions, p, seed=1).fingerprint() for p in PROTOCOLS} == expected
