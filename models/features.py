"""Declared features and their encoders: raw values -> integer ids or normalised numbers.

Every kind encodes into a fixed-shape numpy array per entity:

- ``id``, ``categorical``, ``bucket``: int64 ``[n]``; row 0 is the learned unknown row.
- ``multi_hot``, ``history``: int64 ``[n, max_len]``; 0 is padding (and unknown tokens are dropped).
- ``numeric``: float32 ``[n, 2]``: the normalised value and a missing flag.

A ``history`` feature has no vocabulary of its own: it uses the item-id vocabulary.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

Kind = Literal["id", "categorical", "multi_hot", "numeric", "bucket", "history", "sequence"]
KINDS: tuple[str, ...] = (
    "id",
    "categorical",
    "multi_hot",
    "numeric",
    "bucket",
    "history",
    "sequence",
)
# A user's items in time order: ``history`` mean-pools them, ``sequence`` reads them in order
# (models.sequence). Both come from interactions, not from the user table.
HISTORY_KINDS = ("history", "sequence")
ENCODERS = ("attention", "gru")
UNKNOWN = 0
ONE_HOT_KINDS = ("categorical", "bucket")


class FeatureConfigError(ValueError):
    """A feature declaration that cannot be used."""


@dataclass(frozen=True)
class FeatureDef:
    """One declared feature: where its raw value comes from and how it is encoded."""

    name: str
    kind: str
    field: str = ""  # source column; defaults to the name
    transform: str = "zscore"  # numeric: zscore | log (log1p, then z-score)
    boundaries: tuple[float, ...] = ()  # bucket: sorted upper-exclusive edges
    prefix: int = 0  # categorical: keep only the first `prefix` characters
    max_len: int = 50  # multi_hot / history: longest kept list (history keeps the latest)
    dim: int = 0  # embedding size; 0 picks one from the cardinality
    encoder: str = "attention"  # sequence: attention (causal self-attention) | gru
    blocks: int = 2  # sequence, attention: blocks of self-attention + feed-forward
    heads: int = 1  # sequence, attention: heads (must divide the embedding size)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FeatureConfigError(f"feature {self.name!r}: kind {self.kind!r} not in {KINDS}")
        if self.kind == "bucket" and list(self.boundaries) != sorted(self.boundaries):
            raise FeatureConfigError(f"feature {self.name!r}: boundaries must be sorted")
        if self.kind == "sequence" and self.encoder not in ENCODERS:
            raise FeatureConfigError(
                f"feature {self.name!r}: encoder {self.encoder!r} not in {ENCODERS}"
            )
        if self.kind == "sequence" and (self.blocks < 1 or self.heads < 1 or self.max_len < 1):
            raise FeatureConfigError(f"feature {self.name!r}: blocks, heads, max_len must be >= 1")
        if self.kind == "numeric" and self.transform not in ("zscore", "log"):
            raise FeatureConfigError(f"feature {self.name!r}: transform must be zscore or log")

    @property
    def source(self) -> str:
        return self.field or self.name

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FeatureDef:
        raw = dict(raw)
        raw["boundaries"] = tuple(float(b) for b in raw.get("boundaries", ()))
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise FeatureConfigError(f"feature {raw.get('name')!r}: unknown keys {sorted(unknown)}")
        return cls(**raw)


def auto_dim(cardinality: int, scale: float = 8.0, low: int = 4, high: int = 64) -> int:
    """Embedding size from the fourth root of the cardinality, clamped to [low, high]."""
    return int(min(high, max(low, round(scale * max(cardinality, 1) ** 0.25))))


def _to_float(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int past float's range
        return math.nan
    return out if math.isfinite(out) else math.nan


def _tokens(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    return [str(v) for v in value]


@dataclass
class FeatureSpec:
    """The fitted features of one tower side: definitions, vocabularies and normalisers."""

    side: str
    features: list[FeatureDef]
    vocabs: dict[str, dict[str, int]] = field(default_factory=dict)
    stats: dict[str, tuple[float, float]] = field(default_factory=dict)  # numeric mean, std
    dims: dict[str, int] = field(default_factory=dict)
    # categorical / bucket features encoded one-hot: a fixed identity table, dims = rows
    one_hot: list[str] = field(default_factory=list)

    def get(self, name: str) -> FeatureDef:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    def of_kind(self, *kinds: str) -> list[FeatureDef]:
        return [f for f in self.features if f.kind in kinds]

    def cardinality(self, feature: FeatureDef, item_vocab_size: int = 0) -> int:
        """Rows of the embedding table, unknown/padding row included."""
        if feature.kind in HISTORY_KINDS:
            return item_vocab_size + 1
        if feature.kind == "bucket":
            return len(feature.boundaries) + 2
        return len(self.vocabs[feature.name]) + 1

    def fit(
        self,
        columns: Mapping[str, Sequence[Any]],
        ids_seen: Iterable[str] = (),
        scale: float = 8.0,
        item_vocab_size: int = 0,
        high: int = 64,
        one_hot_max: int = 0,
    ) -> FeatureSpec:
        """Learn vocabularies and normalisers.

        ``columns`` holds the raw table columns; ``ids_seen`` the ids that have training
        interactions (only those get their own id row; others share the unknown row). A
        categorical or bucket feature of at most ``one_hot_max`` rows (unknown included) and no
        declared ``dim`` is one-hot: a learned table of that few rows is mostly a costlier way
        to say the same (gender: 3 rows got 21 dimensions).
        """
        for feature in self.features:
            if feature.kind == "id":
                self.vocabs[feature.name] = _vocab(ids_seen)
            elif feature.kind == "categorical":
                values = columns.get(feature.source, [])
                self.vocabs[feature.name] = _vocab(self._categorical(feature, v) for v in values)
            elif feature.kind == "multi_hot":
                values = columns.get(feature.source, [])
                self.vocabs[feature.name] = _vocab(t for v in values for t in _tokens(v))
            elif feature.kind == "numeric":
                raw = np.array([_to_float(v) for v in columns.get(feature.source, [])])
                raw = self._transform(feature, raw)
                finite = raw[np.isfinite(raw)]
                mean = float(finite.mean()) if finite.size else 0.0
                std = float(finite.std()) if finite.size > 1 else 1.0
                self.stats[feature.name] = (mean, std if std > 1e-12 else 1.0)
        self.one_hot = []
        for feature in self.features:
            if feature.kind == "numeric":
                continue
            card = self.cardinality(feature, item_vocab_size)
            if feature.kind in ONE_HOT_KINDS and not feature.dim and card <= one_hot_max:
                self.one_hot.append(feature.name)
                self.dims[feature.name] = card
                continue
            self.dims[feature.name] = feature.dim or auto_dim(card, scale, high=high)
        return self

    @staticmethod
    def _categorical(feature: FeatureDef, value: Any) -> str:
        text = "" if value is None else str(value)
        return text[: feature.prefix] if feature.prefix else text

    @staticmethod
    def _transform(feature: FeatureDef, raw: np.ndarray) -> np.ndarray:
        if feature.transform == "log":
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.log1p(np.where(raw > -1, raw, np.nan))
        return raw

    def encode(
        self, columns: Mapping[str, Sequence[Any]], n: int, item_vocab: dict[str, int] | None = None
    ) -> dict[str, np.ndarray]:
        """Encode ``n`` entities from raw columns (missing columns encode as unknown)."""
        out: dict[str, np.ndarray] = {}
        for feature in self.features:
            if feature.kind in HISTORY_KINDS:
                continue  # built from interactions (models.inputs)
            values = columns.get(feature.source)
            if values is None:
                values = [None] * n
            out[feature.name] = self._encode_one(feature, values, n)
        return out

    def encode_values(self, values: dict[str, Any]) -> dict[str, np.ndarray]:
        """Encode one entity's raw values given by feature name (as a request sends them).

        Returns ``{name: array with a leading batch axis of 1}`` for the named features only;
        unknown names raise ``KeyError`` naming them. History is not encoded here.
        """
        names = {f.name: f for f in self.features if f.kind not in HISTORY_KINDS}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise KeyError(f"unknown {self.side} features {unknown}; declared: {sorted(names)}")
        return {name: self._encode_one(names[name], [value], 1) for name, value in values.items()}

    def _encode_one(self, feature: FeatureDef, values: Sequence[Any], n: int) -> np.ndarray:
        if feature.kind in ("id", "categorical"):
            vocab = self.vocabs[feature.name]
            key = (lambda v: "" if v is None else str(v)) if feature.kind == "id" else None
            return np.fromiter(
                (
                    vocab.get(key(v) if key else self._categorical(feature, v), UNKNOWN)
                    for v in values
                ),
                dtype=np.int64,
                count=n,
            )
        if feature.kind == "bucket":
            raw = np.array([_to_float(v) for v in values], dtype=np.float64)
            rows = np.searchsorted(np.asarray(feature.boundaries), raw, side="right") + 1
            return np.where(np.isnan(raw), UNKNOWN, rows).astype(np.int64)
        if feature.kind == "multi_hot":
            return encode_lists(
                ([self.vocabs[feature.name].get(t, UNKNOWN) for t in _tokens(v)] for v in values),
                n,
                feature.max_len,
            )
        raw = self._transform(feature, np.array([_to_float(v) for v in values]))
        mean, std = self.stats[feature.name]
        missing = ~np.isfinite(raw)
        value = np.where(missing, 0.0, (raw - mean) / std)
        return np.stack([value, missing.astype(np.float64)], axis=1).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "features": [asdict(f) for f in self.features],
            "vocabs": self.vocabs,
            "stats": {k: list(v) for k, v in self.stats.items()},
            "dims": self.dims,
            "one_hot": self.one_hot,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FeatureSpec:
        return cls(
            side=raw["side"],
            features=[FeatureDef.from_dict(f) for f in raw["features"]],
            vocabs={k: dict(v) for k, v in raw["vocabs"].items()},
            stats={k: (float(v[0]), float(v[1])) for k, v in raw["stats"].items()},
            dims={k: int(v) for k, v in raw["dims"].items()},
            one_hot=[str(name) for name in raw.get("one_hot", [])],
        )


def _vocab(values: Iterable[str]) -> dict[str, int]:
    """Vocabulary in order of decreasing frequency, ties by first appearance; row 0 is unknown."""
    counts = Counter(v for v in values if v != "")
    ordered = sorted(counts, key=lambda v: -counts[v])
    return {value: row + 1 for row, value in enumerate(ordered)}


def encode_lists(lists: Iterable[list[int]], n: int, max_len: int) -> np.ndarray:
    """Pack integer lists into ``[n, max_len]``: left-aligned, zero-padded, the last ones kept."""
    out = np.zeros((n, max_len), dtype=np.int64)
    for row, values in enumerate(lists):
        kept = [v for v in values if v != UNKNOWN][-max_len:]
        out[row, : len(kept)] = kept
    return out
