"""Tower: embeddings of one side's features -> concat -> MLP -> L2-normalised vector."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.features import UNKNOWN, FeatureSpec


def mean_pool(embedded: Tensor, tokens: Tensor) -> Tensor:
    """``[B, L, D]`` embeddings of ``[B, L]`` tokens -> ``[B, D]`` mean over non-padding ones
    (zeros for a row of padding only)."""
    mask = (tokens != UNKNOWN).unsqueeze(-1).float()
    return (embedded * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class Tower(nn.Module):
    """One side of the two-tower model.

    ``forward`` takes the encoded features of a batch (see ``models.features``) and returns
    unit vectors ``[batch, out_dim]``.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        hidden: list[int],
        out_dim: int,
        dropout: float = 0.0,
        id_dropout: float = 0.0,
        item_vocab_size: int = 0,
        history_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.id_dropout = id_dropout
        self.history_dropout = history_dropout
        self.embeddings = nn.ModuleDict()
        width = 0
        for feature in spec.features:
            if feature.kind == "numeric":
                width += 2
                continue
            rows = spec.cardinality(feature, item_vocab_size)
            dim = spec.dims[feature.name]
            pad = 0 if feature.kind in ("multi_hot", "history") else None
            table = nn.Embedding(rows, dim, padding_idx=pad)
            nn.init.normal_(table.weight, std=0.05)
            if pad is not None:
                with torch.no_grad():
                    table.weight[pad].zero_()
            self.embeddings[feature.name] = table
            width += dim
        layers: list[nn.Module] = [nn.Dropout(dropout)]  # on the concatenated embeddings too
        for size in hidden:
            layers += [nn.Linear(width, size), nn.GELU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, out_dim))
        self.mlp = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        parts = []
        for feature in self.spec.features:
            value = inputs[feature.name]
            if feature.kind == "numeric":
                parts.append(value.float())
                continue
            table = self.embeddings[feature.name]
            if feature.kind in ("multi_hot", "history"):
                if feature.kind == "history" and self.training and self.history_dropout > 0:
                    drop = torch.rand(value.shape[0], 1, device=value.device) < self.history_dropout
                    value = value.masked_fill(drop, UNKNOWN)
                parts.append(mean_pool(table(value), value))
                continue
            if feature.kind == "id" and self.training and self.id_dropout > 0:
                drop = torch.rand(value.shape, device=value.device) < self.id_dropout
                value = value.masked_fill(drop, UNKNOWN)
            parts.append(table(value))
        return F.normalize(self.mlp(torch.cat(parts, dim=-1)), dim=-1)


class FrozenTower:
    """Evaluation-mode forward of a ``Tower`` as plain tensor ops, for serving.

    The same operations on the same weight tensors in the same order as ``Tower.forward`` in
    evaluation mode, so vectors are bit-identical; what is left out is ``nn.Module`` dispatch
    (hooks, ``__getattr__``) and the identity dropouts, about a quarter of a one-user forward
    on the CPU. Later weight changes show through (the tensors are shared, not copied).
    """

    def __init__(self, tower: Tower):
        self.features: list[tuple[str, str, Tensor | None]] = []
        for feature in tower.spec.features:
            table = tower.embeddings[feature.name] if feature.kind != "numeric" else None
            weight = table.weight.detach() if isinstance(table, nn.Embedding) else None
            self.features.append((feature.name, feature.kind, weight))
        self.layers: list[tuple[str, Tensor | None, Tensor | None, str]] = []
        for layer in tower.mlp:
            if isinstance(layer, nn.Linear):
                bias = None if layer.bias is None else layer.bias.detach()
                self.layers.append(("linear", layer.weight.detach(), bias, ""))
            elif isinstance(layer, nn.GELU):
                self.layers.append(("gelu", None, None, layer.approximate))
            elif not isinstance(layer, nn.Dropout):  # dropout is the identity when evaluating
                raise TypeError(f"FrozenTower cannot run a {type(layer).__name__} layer")

    def __call__(self, inputs: dict[str, Tensor]) -> Tensor:
        parts = []
        for name, kind, weight in self.features:
            value = inputs[name]
            if weight is None:
                parts.append(value.float())
            elif kind in ("multi_hot", "history"):
                parts.append(mean_pool(F.embedding(value, weight), value))
            else:
                parts.append(F.embedding(value, weight))
        hidden = torch.cat(parts, dim=-1)
        for op, weight, bias, approximate in self.layers:
            if op == "linear":
                assert weight is not None
                hidden = F.linear(hidden, weight, bias)
            else:
                hidden = F.gelu(hidden, approximate=approximate)
        return F.normalize(hidden, dim=-1)
