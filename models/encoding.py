"""A raw dataset turned into model inputs: catalogue rows, user rows and time-ordered histories."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.config import TrainConfig
from models.data import AtomicTable, RawDataset, Split
from models.features import FeatureSpec


@dataclass
class EncodedData:
    """Rows of users and items (catalogue order) with their encoded features.

    ``user_ids`` / ``item_ids`` map rows to external ids; ``inter_users`` / ``inter_items`` are
    the interactions as rows, in file order; ``item_tokens`` maps an item row to its item-id
    vocabulary row (what a history feature embeds; 0 when the item had no training interaction).
    """

    user_ids: np.ndarray  # [U] object
    item_ids: np.ndarray  # [I] object
    user_features: dict[str, np.ndarray]
    item_features: dict[str, np.ndarray]
    inter_users: np.ndarray  # [n] int64
    inter_items: np.ndarray  # [n] int64
    timestamps: np.ndarray  # [n] float64
    item_tokens: np.ndarray  # [I] int64
    inter_numbers: dict[str, np.ndarray] = field(default_factory=dict)  # [n] float64 per field

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def _rows(table: AtomicTable | None, key: str, extra: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """External ids in table order then first-seen order of ids only in interactions."""
    ids: list[str] = list(table.columns[key]) if table is not None else []
    seen = set(ids)
    table_rows = list(range(len(ids)))
    for value in dict.fromkeys(extra.tolist()):
        if value not in seen:
            seen.add(value)
            ids.append(value)
    return np.array(ids, dtype=object), table_rows


def _columns(table: AtomicTable | None, n: int) -> dict[str, list[Any]]:
    """Table columns padded with None for entities that only appear in interactions."""
    if table is None:
        return {}
    return {name: list(col) + [None] * (n - len(col)) for name, col in table.columns.items()}


def id_feature(spec: FeatureSpec) -> str:
    return spec.of_kind("id")[0].name


def fit_specs(
    config: TrainConfig, dataset: RawDataset, split: Split
) -> tuple[FeatureSpec, FeatureSpec]:
    """Fit vocabularies and normalisers on the training rows only (ids) and the tables."""
    inter = dataset.interactions
    scale, high = config.model.embedding_scale, config.model.embedding_max
    one_hot = config.model.one_hot_max
    item_spec = FeatureSpec("item", list(config.item_features))
    item_cols = dataset.items.columns if dataset.items is not None else {}
    train_items = inter.item_ids[split.train]
    item_spec.fit(
        item_cols, ids_seen=train_items.tolist(), scale=scale, high=high, one_hot_max=one_hot
    )
    user_spec = FeatureSpec("user", list(config.user_features))
    user_cols = dataset.users.columns if dataset.users is not None else {}
    user_spec.fit(
        user_cols,
        ids_seen=inter.user_ids[split.train].tolist(),
        scale=scale,
        high=high,
        item_vocab_size=len(item_spec.vocabs[id_feature(item_spec)]),
        one_hot_max=one_hot,
    )
    return user_spec, item_spec


def encode_dataset(
    dataset: RawDataset, user_spec: FeatureSpec, item_spec: FeatureSpec
) -> EncodedData:
    """Encode every user and catalogue item, and map interactions to rows."""
    inter = dataset.interactions
    user_ids, _ = _rows(dataset.users, "user_id", inter.user_ids)
    item_ids, _ = _rows(dataset.items, "item_id", inter.item_ids)
    user_cols = _columns(dataset.users, len(user_ids))
    item_cols = _columns(dataset.items, len(item_ids))
    user_cols[user_spec.get(id_feature(user_spec)).source] = user_ids.tolist()
    item_cols[item_spec.get(id_feature(item_spec)).source] = item_ids.tolist()
    user_features = user_spec.encode(user_cols, len(user_ids))
    item_features = item_spec.encode(item_cols, len(item_ids))
    user_row = {u: r for r, u in enumerate(user_ids.tolist())}
    item_row = {i: r for r, i in enumerate(item_ids.tolist())}
    return EncodedData(
        user_ids=user_ids,
        item_ids=item_ids,
        user_features=user_features,
        item_features=item_features,
        inter_users=np.fromiter((user_row[u] for u in inter.user_ids), np.int64, len(inter)),
        inter_items=np.fromiter((item_row[i] for i in inter.item_ids), np.int64, len(inter)),
        timestamps=np.asarray(inter.timestamps, dtype=np.float64),
        item_tokens=item_features[id_feature(item_spec)].copy(),
        inter_numbers=dict(inter.numbers),
    )


@dataclass
class Histories:
    """Per-user item rows in time order (timestamp, then file line), as CSR arrays."""

    offsets: np.ndarray  # [U + 1] int64
    items: np.ndarray  # [n] int64 item rows
    positions: np.ndarray  # [n] position of each source interaction within its user's sequence
    source_rows: np.ndarray  # [n] interaction row of each sequence entry

    @classmethod
    def build(cls, data: EncodedData, rows: np.ndarray) -> Histories:
        """Sequences from the interactions ``rows`` (e.g. the training split)."""
        rows = np.asarray(rows, dtype=np.int64)
        users = data.inter_users[rows]
        order = np.lexsort((rows, data.timestamps[rows], users))
        sorted_rows = rows[order]
        counts = np.bincount(users, minlength=data.n_users)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        sorted_users = users[order]
        positions = np.arange(len(rows), dtype=np.int64) - offsets[sorted_users]
        return cls(offsets, data.inter_items[sorted_rows], positions, sorted_rows)
