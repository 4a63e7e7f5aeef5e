"""Turn a recall request into user-tower inputs for one snapshot, and run the tower.

A known user starts from the snapshot: profile features from the user table and history from
the items they saw. What the request sends overrides that (``features`` by name, ``history``
as a whole list). An unknown user starts from all-unknown features. A user with no known id,
no features and no known history item is not usable: the caller falls back to popularity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from index_builder.snapshot import LoadedSnapshot
from models.encoding import id_feature
from models.features import HISTORY_KINDS
from models.inputs import FeatureTable, Ragged, history_tokens
from models.towers import FrozenTower
from service.errors import Code, ServiceError
from service.schemas import RecallRequest


@dataclass
class UserQuery:
    """One request resolved against a snapshot."""

    inputs: dict[str, np.ndarray]  # encoded profile features, each with a leading axis of 1
    history: np.ndarray  # [n] int64 known item-id tokens of the history, oldest first
    known: bool  # the user id is in the snapshot's user table
    usable: bool  # anything to build a vector from
    seen: np.ndarray  # [n] int64 item rows the user saw (snapshot and request history)
    explain: dict[str, Any] = field(default_factory=dict)


class UserEncoder:
    """Builds user-tower inputs from requests and embeds them in batches."""

    def __init__(self, snapshot: LoadedSnapshot):
        self.snapshot = snapshot
        spec = snapshot.artifact.user_spec
        self.spec = spec
        self.id_name = id_feature(spec)
        self.history_features = [(f.name, f.max_len) for f in spec.of_kind(*HISTORY_KINDS)]
        self.profile_names = [f.name for f in spec.features if f.kind not in HISTORY_KINDS]
        self.history_names = [name for name, _ in self.history_features]
        self.blank = spec.encode({}, 1)  # every profile feature unknown
        self.tower = FrozenTower(snapshot.artifact.model.user_tower)  # same vectors, less overhead

    def resolve(self, request: RecallRequest) -> UserQuery:
        """Request -> tower inputs; raises ServiceError ``unknown_feature`` for bad names."""
        snap = self.snapshot
        row = snap.user_row.get(request.user_id) if request.user_id is not None else None
        inputs = dict(self.blank)
        profile: list[str] = []
        if row is not None:
            for name in self.profile_names:
                if name in snap.user_features:
                    inputs[name] = snap.user_features[name][row : row + 1]
                    profile.append(name)
        elif request.user_id is not None:
            inputs.update(self.spec.encode_values({self.id_name: request.user_id}))
        sent = dict(request.features or {})
        if sent:
            inputs.update(self._encode_features(sent))
        seen = snap.seen(row) if row is not None else np.empty(0, dtype=np.int64)
        unknown_items = 0
        if request.history is not None:
            history_rows = [snap.item_row.get(item_id) for item_id in request.history]
            unknown_items = history_rows.count(None)
            history = np.array([r for r in history_rows if r is not None], dtype=np.int64)
            seen = np.concatenate([seen, history])
            source = "request"
        else:
            history, source = seen, "snapshot" if row is not None else "none"
        tokens = history_tokens(history, snap.item_tokens)
        kept = max((min(len(tokens), max_len) for _, max_len in self.history_features), default=0)
        explain = {
            "request_features": sorted(sent),
            "profile_features": [name for name in profile if name not in sent],
            "history_source": source if self.history_features else "none",
            "history_length": kept,
            "unknown_history_items": unknown_items,
        }
        usable = row is not None or bool(sent) or kept > 0
        return UserQuery(inputs, tokens, row is not None, usable, seen, explain)

    def _encode_features(self, sent: dict[str, Any]) -> dict[str, np.ndarray]:
        history = sorted(set(sent) & set(self.history_names))
        if history:
            raise ServiceError(
                Code.UNKNOWN_FEATURE,
                f"features.{history[0]}: history is not a feature value; send item ids in the "
                "top-level `history` list",
            )
        try:
            return self.spec.encode_values(sent)
        except KeyError as exc:
            unknown = sorted(set(sent) - set(self.profile_names))
            raise ServiceError(
                Code.UNKNOWN_FEATURE,
                f"features.{unknown[0] if unknown else ''}: {exc.args[0]}",
            ) from exc

    def embed(self, queries: list[UserQuery]) -> np.ndarray:
        """Unit user vectors ``[len(queries), dim]`` float32, one tower call for the batch."""
        arrays = {
            name: np.concatenate([q.inputs[name] for q in queries]) for name in self.profile_names
        }
        rows = torch.arange(len(queries))
        batch = FeatureTable(self.spec, arrays).rows(rows)
        if self.history_features:
            histories = Ragged.from_lists([q.history for q in queries])
            for name, max_len in self.history_features:
                batch[name] = histories.bags(rows, max_len)
        with torch.inference_mode():
            vectors = self.tower(batch)
        return np.ascontiguousarray(vectors.numpy(), dtype=np.float32)
