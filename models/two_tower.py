"""TwoTower: a user tower and an item tower that meet only at a cosine."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import Tensor, nn

from models.features import FeatureSpec
from models.inputs import TowerInputs
from models.towers import Tower


@dataclass(frozen=True)
class ModelConfig:
    """Architecture numbers; stored in every artifact so nothing downstream restates them."""

    hidden: list[int] = field(default_factory=lambda: [256])
    dim: int = 64
    temperature: float = 0.05
    dropout: float = 0.0
    id_dropout: float = 0.1
    history_dropout: float = 0.0  # training only: drop a user's whole history with this probability
    embedding_scale: float = 8.0  # auto embedding size = scale * cardinality ** 0.25 ...
    embedding_max: int = 64  # ... clamped to [4, embedding_max]
    # categorical / bucket features with at most this many rows (unknown included) are one-hot
    one_hot_max: int = 0

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"[model] has unknown keys {sorted(unknown)}")
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TwoTower(nn.Module):
    """User tower + item tower; ``score`` = cosine / temperature."""

    def __init__(self, config: ModelConfig, user_spec: FeatureSpec, item_spec: FeatureSpec):
        super().__init__()
        self.config = config
        item_id = item_spec.of_kind("id")[0].name  # whatever the config names it
        item_vocab = len(item_spec.vocabs.get(item_id, {}))
        self.rng = np.random.default_rng(0)  # dropout masks of both towers; see reseed
        self.user_tower = Tower(
            user_spec,
            config.hidden,
            config.dim,
            config.dropout,
            config.id_dropout,
            item_vocab_size=item_vocab,
            history_dropout=config.history_dropout,
            rng=self.rng,
        )
        self.item_tower = Tower(
            item_spec, config.hidden, config.dim, config.dropout, config.id_dropout, rng=self.rng
        )

    def reseed(self, seed: int) -> None:
        """Restart the stream that the dropouts (features, id, history) draw from."""
        self.rng.bit_generator.state = np.random.PCG64(seed).state

    def user_vectors(self, inputs: TowerInputs) -> Tensor:
        """Encoded user features -> unit vectors ``[batch, dim]``."""
        return self.user_tower(inputs)

    def item_vectors(self, inputs: TowerInputs) -> Tensor:
        """Encoded item features -> unit vectors ``[batch, dim]``."""
        return self.item_tower(inputs)

    def score(self, user_vectors: Tensor, item_vectors: Tensor) -> Tensor:
        """``[B, D] x [N, D] -> [B, N]`` cosine / temperature."""
        return user_vectors @ item_vectors.T / self.config.temperature
