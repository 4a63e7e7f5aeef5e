"""The one input encoder: history windows, unknown tokens, token lists, feature gathers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from models.config import TrainConfig
from models.data import Split, load_dataset, make_split
from models.encoding import EncodedData, Histories, encode_dataset, fit_specs
from models.features import UNKNOWN
from models.inputs import Bag, HistoryTable, Inputs, Ragged, gather_ranges, history_tokens

# One user; rows a..e at times 30, 10, 10, 20, 10: by (time, line) the order is b, c, e, d, a.
# Items get tokens by training frequency (all once, so first appearance): a=1 .. e=5.
TIED = [("u1", "a", 30), ("u1", "b", 10), ("u1", "c", 10), ("u1", "d", 20), ("u1", "e", 10)]


def lists(bag: Bag) -> list[list[int]]:
    offsets = bag.offsets.tolist()
    tokens = bag.tokens.tolist()
    return [tokens[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


@pytest.fixture
def tied(write_atomic: Callable[..., Path], config_for: Callable[..., TrainConfig]) -> EncodedData:
    folder = write_atomic("tied", TIED)
    dataset = load_dataset(folder)
    split = Split("leave-last-out", 0, np.arange(5), np.array([], int), np.array([], int), [])
    user_spec, item_spec = fit_specs(config_for(folder), dataset, split)
    return encode_dataset(dataset, user_spec, item_spec)


def table_of(data: EncodedData, tokens: np.ndarray | None = None) -> HistoryTable:
    histories = Histories.build(data, np.arange(len(data.inter_users)))
    return HistoryTable(
        histories.offsets, histories.items, tokens if tokens is not None else data.item_tokens
    )


def test_history_of_an_entry_holds_only_earlier_entries_never_the_target(tied: EncodedData) -> None:
    entries = torch.arange(5)
    bag = table_of(tied).before(torch.zeros(5, dtype=torch.int64), entries, 3)
    assert lists(bag) == [[], [2], [2, 3], [2, 3, 5], [3, 5, 4]]


def test_latest_history_keeps_the_newest_items_in_time_order(tied: EncodedData) -> None:
    table = table_of(tied)
    assert lists(table.latest(torch.tensor([0]), 3)) == [[5, 4, 1]]
    assert lists(table.latest(torch.tensor([0]), 8)) == [[2, 3, 5, 4, 1]]


def test_unknown_tokens_are_dropped_before_the_window_is_cut(tied: EncodedData) -> None:
    # Items c and d lost their id rows (as in a catalogue grown since training): the window
    # of the last 3 keeps 3 known tokens, reaching further back, never padding with unknowns.
    tokens = tied.item_tokens.copy()
    tokens[[2, 3]] = UNKNOWN  # c, d
    table = table_of(tied, tokens)
    assert lists(table.latest(torch.tensor([0]), 3)) == [[2, 5, 1]]
    bag = table.before(torch.zeros(5, dtype=torch.int64), torch.arange(5), 2)
    assert lists(bag) == [[], [2], [2], [2, 5], [2, 5]]
    # The service's path: item rows in time order -> known tokens -> the same window.
    order = np.array([1, 2, 4, 3, 0])
    served = Ragged.from_lists([history_tokens(order, tokens)]).bags(torch.tensor([0]), 3)
    assert lists(served) == [[2, 5, 1]]


def reference_before(data: EncodedData, rows: np.ndarray, max_len: int) -> dict[int, list[int]]:
    """Per source row: known tokens of the same user's rows earlier in (timestamp, line), the
    last ``max_len`` kept, straight from the definition."""
    out = {}
    for row in rows.tolist():
        key = (data.timestamps[row], row)
        earlier = [
            r
            for r in rows.tolist()
            if data.inter_users[r] == data.inter_users[row] and (data.timestamps[r], r) < key
        ]
        earlier.sort(key=lambda r: (data.timestamps[r], r))
        known = [int(data.item_tokens[data.inter_items[r]]) for r in earlier]
        out[row] = [t for t in known if t != UNKNOWN][-max_len:]
    return out


def test_histories_of_many_users_match_the_definition(
    tiny_data_dir: Path, tiny_config: TrainConfig
) -> None:
    dataset = load_dataset(tiny_data_dir)
    split = make_split(dataset.interactions, "leave-last-out", 0)
    user_spec, item_spec = fit_specs(tiny_config, dataset, split)
    data = encode_dataset(dataset, user_spec, item_spec)
    histories = Histories.build(data, split.train)
    table = HistoryTable(histories.offsets, histories.items, data.item_tokens)
    entries = torch.arange(len(split.train))
    users = torch.from_numpy(data.inter_users[histories.source_rows])
    got = lists(table.before(users, entries, 5))
    expected = reference_before(data, split.train, 5)
    assert [expected[row] for row in histories.source_rows.tolist()] == got


def test_a_user_without_rows_has_an_empty_history(tied: EncodedData) -> None:
    histories = Histories.build(tied, np.empty(0, dtype=np.int64))
    table = HistoryTable(histories.offsets, histories.items, tied.item_tokens)
    assert lists(table.latest(torch.tensor([0]), 3)) == [[]]


def test_gather_ranges_lays_ranges_end_to_end_and_skips_empty_ones() -> None:
    positions, offsets = gather_ranges(torch.tensor([3, 7, 0, 5]), torch.tensor([5, 7, 2, 4]))
    assert positions.tolist() == [3, 4, 0, 1]
    assert offsets.tolist() == [0, 2, 2, 4, 4]


def test_ragged_from_padded_drops_padding_and_keeps_order() -> None:
    ragged = Ragged.from_padded(np.array([[4, 2, 0], [0, 0, 0], [3, 0, 9]]))
    assert lists(ragged.bags(torch.tensor([2, 0, 1]))) == [[3, 9], [4, 2], []]
    assert lists(ragged.bags(torch.tensor([0]), max_len=1)) == [[2]]


def test_inputs_gather_each_feature_of_the_asked_rows(
    tiny_data_dir: Path, tiny_config: TrainConfig
) -> None:
    dataset = load_dataset(tiny_data_dir)
    split = make_split(dataset.interactions, "leave-last-out", 0)
    specs = fit_specs(tiny_config, dataset, split)
    data = encode_dataset(dataset, *specs)
    inputs = Inputs(data, Histories.build(data, split.train), *specs)
    rows = np.array([5, 0, 5])
    items = inputs.items(rows)
    np.testing.assert_array_equal(items["item_id"], data.item_features["item_id"][rows])
    np.testing.assert_array_equal(items["release_year"], data.item_features["release_year"][rows])
    genres = data.item_features["genres"][rows]
    assert lists(items["genres"]) == [[t for t in row if t != UNKNOWN] for row in genres.tolist()]
    users = inputs.users(rows)
    np.testing.assert_array_equal(users["user_id"], data.user_features["user_id"][rows])
    assert lists(users["history"]) == lists(inputs.history.latest(torch.from_numpy(rows), 100))
