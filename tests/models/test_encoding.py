"""Fitting on training rows, catalogue rows, and time-ordered histories against hand-built cases."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from models.config import TrainConfig
from models.data import Split, load_dataset
from models.encoding import EncodedData, Histories, encode_dataset, fit_specs

USERS = [("u1", "24", "F", "writer", "85711"), ("u2", "53", "M", "other", "94043")]
USERS += [("u3", "30", "X", "artist", "12345")]  # u3 never interacts
ITEMS = [("i1", "1990", "Drama"), ("i2", "1995", "Action Drama"), ("i3", "2000", "Comedy")]
# Rows 0-3 train, 4 valid, 5 test. u7 is not in the user table, i9 not in the item table.
INTER = [
    ("u1", "i1", 1),
    ("u1", "i2", 2),
    ("u2", "i1", 3),
    ("u7", "i2", 3.5),
    ("u2", "i9", 4),
    ("u1", "i9", 5),
]
SPLIT = Split("leave-last-out", 0, np.arange(4), np.array([4]), np.array([5]), np.array([]))


def split_of(n: int) -> Split:
    return Split(
        "leave-last-out", 0, np.arange(n), np.array([], int), np.array([], int), np.array([])
    )


@pytest.fixture
def encoded(write_atomic: Callable[..., Path], config_for: Callable[..., TrainConfig]) -> tuple:
    folder = write_atomic("hand", INTER, USERS, ITEMS)
    dataset = load_dataset(folder)
    user_spec, item_spec = fit_specs(config_for(folder), dataset, SPLIT)
    return user_spec, item_spec, encode_dataset(dataset, user_spec, item_spec)


def test_fit_specs_gives_id_rows_only_to_ids_with_training_interactions(encoded: tuple) -> None:
    user_spec, item_spec, _ = encoded
    # Training rows 0-3: u1 twice, u2 and u7 once (tie: first seen first); i1 and i2 twice.
    assert user_spec.vocabs["user_id"] == {"u1": 1, "u2": 2, "u7": 3}
    assert item_spec.vocabs["item_id"] == {"i1": 1, "i2": 2}  # i9 is only in valid/test


def test_fit_specs_learns_table_features_from_every_table_row(encoded: tuple) -> None:
    user_spec, item_spec, _ = encoded
    assert user_spec.vocabs["gender"] == {"F": 1, "M": 2, "X": 3}
    assert item_spec.stats["release_year"] == pytest.approx((1995.0, np.std([1990, 1995, 2000])))


def test_history_table_is_sized_from_the_item_id_vocabulary(encoded: tuple) -> None:
    user_spec, item_spec, _ = encoded
    history = user_spec.get("history")
    assert user_spec.cardinality(history, len(item_spec.vocabs["item_id"])) == 3


def test_encode_dataset_appends_entities_only_in_interactions_after_the_table_rows(
    encoded: tuple,
) -> None:
    _, _, data = encoded
    assert data.user_ids.tolist() == ["u1", "u2", "u3", "u7"]
    assert data.item_ids.tolist() == ["i1", "i2", "i3", "i9"]
    np.testing.assert_array_equal(data.inter_users, [0, 0, 1, 3, 1, 0])
    np.testing.assert_array_equal(data.inter_items, [0, 1, 0, 1, 3, 3])
    np.testing.assert_array_equal(data.timestamps, [1, 2, 3, 3.5, 4, 5])
    # Id rows: u3 and i3 have no training interaction, u7 has one; i9 none.
    np.testing.assert_array_equal(data.user_features["user_id"], [1, 2, 0, 3])
    np.testing.assert_array_equal(data.item_tokens, [1, 2, 0, 0])
    # u7 and i9 have no table row: their table features are unknown / missing.
    assert data.user_features["gender"][3] == 0 and data.user_features["age"][3] == 0
    np.testing.assert_array_equal(data.item_features["genres"][3], [0] * 6)
    np.testing.assert_array_equal(data.item_features["release_year"][3], [0.0, 1.0])
    # Genres vocabulary: Drama 2, Action 1, Comedy 1 -> i2 "Action Drama" is [2, 1].
    np.testing.assert_array_equal(data.item_features["genres"][1], [2, 1, 0, 0, 0, 0])


# One user, five interactions; three share timestamp 10. (timestamp, line) order is lines
# 1 (b), 2 (c), 4 (e), 3 (d), 0 (a). Item tokens follow first appearance in the training
# rows (all once): a=1, b=2, c=3, d=4, e=5, so the sequence's tokens are 2, 3, 5, 4, 1.
TIED = [("u1", "a", 30), ("u1", "b", 10), ("u1", "c", 10), ("u1", "d", 20), ("u1", "e", 10)]


@pytest.fixture
def tied(write_atomic: Callable[..., Path], config_for: Callable[..., TrainConfig]) -> EncodedData:
    folder = write_atomic("tied", TIED)
    dataset = load_dataset(folder)
    user_spec, item_spec = fit_specs(config_for(folder), dataset, split_of(5))
    return encode_dataset(dataset, user_spec, item_spec)


def test_histories_order_a_users_entries_by_timestamp_then_file_line(tied: EncodedData) -> None:
    histories = Histories.build(tied, np.arange(5))
    np.testing.assert_array_equal(histories.source_rows, [1, 2, 4, 3, 0])
    np.testing.assert_array_equal(histories.items, [1, 2, 4, 3, 0])
    np.testing.assert_array_equal(histories.positions, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(histories.offsets, [0, 5])


def test_histories_built_from_a_subset_of_rows_ignore_the_other_rows(tied: EncodedData) -> None:
    # Without lines 2 (c) and 3 (d): sequence b, e, a.
    histories = Histories.build(tied, np.array([0, 1, 4]))
    np.testing.assert_array_equal(histories.source_rows, [1, 4, 0])
    np.testing.assert_array_equal(histories.positions, [0, 1, 2])
