"""THE encoder of tower inputs: what "the inputs of a user" and "the inputs of an item" are.

Training, evaluation, the index builder and the service all build tower inputs here, so a
vector computed online equals the one computed offline. A tower reads, per feature kind
(``models.features``):

- ``id``, ``categorical``, ``bucket``: int64 ``[B]`` rows of the feature's table;
- ``numeric``: float32 ``[B, 2]`` (normalised value, missing flag);
- ``multi_hot``, ``history``: a :class:`Bag` of token lists, mean-pooled by ``embedding_bag``.

A user's **history** is the item-id tokens of the items they interacted with, in time order,
unknown tokens (items without their own id row) dropped first, then the last ``max_len`` kept
(:func:`history_tokens`, :meth:`Ragged.windows`). A training example sees the history strictly
before its own interaction; serving and the index builder see the latest one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import Tensor

from models.features import HISTORY_KINDS, UNKNOWN, FeatureSpec

if TYPE_CHECKING:  # models.encoding imports the config, which imports the towers
    from models.encoding import EncodedData, Histories

POOLED = ("multi_hot", "history")  # mean-pooled lists; a sequence is a Bag read in order
LISTS = (*POOLED, "sequence")  # kinds whose inputs are Bags


class Bag(NamedTuple):
    """``B`` token lists: list ``b`` is ``tokens[offsets[b]:offsets[b + 1]]`` (never UNKNOWN)."""

    tokens: Tensor  # [N] int64
    offsets: Tensor  # [B + 1] int64


class Pooled(NamedTuple):
    """A feature already embedded (and pooled) elsewhere, e.g. by a sharded table ``[B, D]``."""

    vectors: Tensor


TowerInputs = dict[str, "Tensor | Bag | Pooled"]


def _offsets(lengths: Tensor) -> Tensor:
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64, device=lengths.device)
    torch.cumsum(lengths, 0, out=offsets[1:])
    return offsets


def gather_ranges(starts: Tensor, ends: Tensor) -> tuple[Tensor, Tensor]:
    """Positions of the ranges ``[starts[b], ends[b])`` laid end to end, and their offsets."""
    lengths = (ends - starts).clamp(min=0)
    offsets = _offsets(lengths)
    shift = torch.repeat_interleave(starts - offsets[:-1], lengths)
    return shift.add_(torch.arange(len(shift), device=shift.device)), offsets


class Ragged:
    """Token lists of every entity as CSR tensors.

    List ``r`` is ``tokens[offsets[r]:offsets[r + 1]]``.
    """

    def __init__(self, tokens: Tensor, offsets: Tensor):
        self.tokens, self.offsets = tokens, offsets

    @classmethod
    def from_padded(cls, padded: np.ndarray) -> Ragged:
        """``[n, max_len]`` zero-padded token rows (``FeatureSpec`` storage) -> lists."""
        padded = np.asarray(padded, dtype=np.int64).reshape(len(padded), -1)
        keep = padded != UNKNOWN
        tokens = torch.from_numpy(np.ascontiguousarray(padded[keep]))
        return cls(tokens, _offsets(torch.from_numpy(keep.sum(axis=1).astype(np.int64))))

    @classmethod
    def from_lists(cls, lists: Sequence[np.ndarray]) -> Ragged:
        """Token arrays (already free of UNKNOWN) -> lists."""
        lengths = torch.tensor([len(tokens) for tokens in lists], dtype=torch.int64)
        flat = np.concatenate(lists) if lists else np.empty(0, dtype=np.int64)
        return cls(torch.from_numpy(flat.astype(np.int64, copy=False)), _offsets(lengths))

    def to(self, device: torch.device | str) -> Ragged:
        return Ragged(self.tokens.to(device), self.offsets.to(device))

    def bags(self, rows: Tensor, max_len: int | None = None) -> Bag:
        """The lists of ``rows`` (their last ``max_len`` tokens when given)."""
        return self.windows(
            self.offsets.index_select(0, rows), self.offsets.index_select(0, rows + 1), max_len
        )

    def windows(self, starts: Tensor, ends: Tensor, max_len: int | None = None) -> Bag:
        """Tokens ``[starts[b], ends[b])`` of the flat array, the last ``max_len`` of each."""
        if max_len is not None:
            starts = torch.maximum(starts, ends - max_len)
        positions, offsets = gather_ranges(starts, ends)
        return Bag(self.tokens.index_select(0, positions), offsets)


def history_tokens(item_rows: np.ndarray, item_tokens: np.ndarray) -> np.ndarray:
    """A history's tokens: item rows in time order -> their id tokens, unknown ones dropped."""
    tokens = item_tokens[np.asarray(item_rows, dtype=np.int64)]
    return tokens[tokens != UNKNOWN]


class FeatureTable:
    """One side's encoded features (``FeatureSpec.encode`` arrays) as tensors, gathered by row.

    History features are not here (see :class:`HistoryTable`): they come from interactions.
    """

    def __init__(
        self, spec: FeatureSpec, arrays: dict[str, np.ndarray], device: torch.device | str = "cpu"
    ):
        self.columns: dict[str, Tensor] = {}
        self.lists: dict[str, Ragged] = {}
        for feature in spec.features:
            if feature.kind in HISTORY_KINDS:
                continue
            if feature.kind == "multi_hot":
                self.lists[feature.name] = Ragged.from_padded(arrays[feature.name]).to(device)
            else:
                self.columns[feature.name] = torch.from_numpy(np.asarray(arrays[feature.name])).to(
                    device
                )

    def rows(self, rows: Tensor) -> TowerInputs:
        # index_select: several times faster than advanced indexing on the CPU
        out: TowerInputs = {
            name: values.index_select(0, rows) for name, values in self.columns.items()
        }
        for name, lists in self.lists.items():
            out[name] = lists.bags(rows)
        return out


class HistoryTable:
    """Every user's history as known tokens in time order, built once from ``Histories``.

    ``entry_end[e]`` is where the tokens strictly before sequence entry ``e`` end in the flat
    token array, so a training example's history is a window ending there.
    """

    def __init__(
        self,
        offsets: np.ndarray,
        items: np.ndarray,
        item_tokens: np.ndarray,
        device: torch.device | str = "cpu",
    ):
        tokens = np.asarray(item_tokens, dtype=np.int64)[np.asarray(items, dtype=np.int64)]
        known = tokens != UNKNOWN
        before = np.zeros(len(tokens) + 1, dtype=np.int64)  # known tokens among the first e
        np.cumsum(known, out=before[1:])
        self.tokens = Ragged(
            torch.from_numpy(tokens[known]), torch.from_numpy(before[np.asarray(offsets)])
        ).to(device)
        self.entry_end = torch.from_numpy(before[:-1]).to(device)

    def latest(self, users: Tensor, max_len: int) -> Bag:
        """Each user's latest ``max_len`` known tokens."""
        return self.tokens.bags(users, max_len)

    def before(self, users: Tensor, entries: Tensor, max_len: int) -> Bag:
        """The last ``max_len`` known tokens strictly before each (user's) sequence entry."""
        starts = self.tokens.offsets.index_select(0, users)
        return self.tokens.windows(starts, self.entry_end.index_select(0, entries), max_len)


def as_rows(rows: np.ndarray | Tensor, device: torch.device | str) -> Tensor:
    """Row numbers as an int64 tensor on ``device``."""
    if not isinstance(rows, Tensor):
        rows = torch.from_numpy(np.asarray(rows, dtype=np.int64))
    return rows.to(device)


class Inputs:
    """What the towers read for one encoded dataset: both sides' features and the histories.

    Built once as tensors on ``device``; a batch is a few index operations.
    """

    def __init__(
        self,
        data: EncodedData,
        histories: Histories,
        user_spec: FeatureSpec,
        item_spec: FeatureSpec,
        device: torch.device | str = "cpu",
    ):
        self.data, self.histories, self.device = data, histories, torch.device(device)
        self.user_spec, self.item_spec = user_spec, item_spec
        self.history_features = [(f.name, f.max_len) for f in user_spec.of_kind(*HISTORY_KINDS)]
        self.user_table = FeatureTable(user_spec, data.user_features, device)
        self.item_table = FeatureTable(item_spec, data.item_features, device)
        self.history = HistoryTable(histories.offsets, histories.items, data.item_tokens, device)

    def users(
        self, rows: np.ndarray | Tensor, entries: np.ndarray | Tensor | None = None
    ) -> TowerInputs:
        """User inputs; history before each sequence entry (the latest when ``entries`` is None)."""
        rows = as_rows(rows, self.device)
        out = self.user_table.rows(rows)
        for name, max_len in self.history_features:
            if entries is None:
                out[name] = self.history.latest(rows, max_len)
            else:
                out[name] = self.history.before(rows, as_rows(entries, self.device), max_len)
        return out

    def items(self, rows: np.ndarray | Tensor) -> TowerInputs:
        return self.item_table.rows(as_rows(rows, self.device))
