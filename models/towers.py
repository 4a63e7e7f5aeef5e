"""Tower: embeddings of one side's features -> concat -> MLP -> L2-normalised vector."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import sequence
from models.features import UNKNOWN, FeatureSpec
from models.inputs import LISTS, POOLED, Bag, Pooled, TowerInputs, gather_ranges
from models.sequence import SequenceEncoder


def pool(bag: Bag, weight: Tensor, sparse: bool = False) -> Tensor:
    """Mean of each list's embeddings ``[B, D]`` (zeros for an empty list).

    When the weight needs a gradient it comes from one sparse-matrix product (``_MeanPool``):
    a dense ``[rows, D]`` tensor, or with ``sparse`` a coalesced sparse one holding only the
    rows the lists used (what ``RowAdam`` reads).
    """
    if not (weight.requires_grad and torch.is_grad_enabled()):
        return F.embedding_bag(
            bag.tokens, weight, bag.offsets, mode="mean", include_last_offset=True
        )
    return _MeanPool.apply(weight, bag.tokens, bag.offsets, sparse)


def lookup(rows: Tensor, weight: Tensor, sparse: bool = False) -> Tensor:
    """Embedding rows ``[B, D]``; a sparse table's gradient comes coalesced, as ``pool``'s."""
    if not sparse:
        return F.embedding(rows, weight)
    singles = torch.arange(len(rows) + 1, device=rows.device)  # a list of one per row
    return pool(Bag(rows, singles), weight, sparse=True)


def _token_order(tokens: Tensor, rows: int) -> Tensor:
    """A stable order of ``tokens`` by value (a radix sort while the values fit 16 bits)."""
    if tokens.device.type == "cpu" and rows <= 1 << 16:
        return torch.from_numpy(np.argsort(tokens.numpy().astype(np.uint16), kind="stable"))
    return torch.sort(tokens, stable=True).indices


def _csr(crow: Tensor, columns: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, columns, values, shape)


class _MeanPool(torch.autograd.Function):
    """``embedding_bag(mode="mean")`` whose weight gradient is ``A^T @ grad``.

    ``A [B, rows]`` holds ``1 / len(list)`` at each (list, token); its transpose is built as a
    CSR matrix from a stable sort of the tokens. Measured on ml-100k's history (512 lists of
    up to 100 tokens, 1.7k x 102 table, one thread): 2.2 ms against 6.9 ms for
    ``embedding_bag``'s backward, which materialises a row per token. With ``sparse`` only the
    used rows are rows of the product, and the gradient is a coalesced sparse tensor.
    """

    @staticmethod
    def forward(ctx: Any, weight: Tensor, tokens: Tensor, offsets: Tensor, sparse: bool) -> Tensor:
        ctx.save_for_backward(tokens, offsets)
        ctx.shape, ctx.sparse = weight.shape, sparse
        return F.embedding_bag(tokens, weight, offsets, mode="mean", include_last_offset=True)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, None, None, None]:
        (grad,) = grads
        tokens, offsets = ctx.saved_tensors
        rows, lengths = ctx.shape[0], offsets.diff()
        lists = torch.repeat_interleave(torch.arange(len(lengths), device=grad.device), lengths)
        scale = 1.0 / lengths.clamp(min=1).to(grad.dtype)
        order = _token_order(tokens, rows).to(grad.device)
        columns = lists.index_select(0, order)
        weights = scale.index_select(0, columns)
        if ctx.sparse:
            used, counts = torch.unique_consecutive(
                tokens.index_select(0, order), return_counts=True
            )
            crow = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
            values = _csr(crow, columns, weights, (len(used), len(lengths))) @ grad.contiguous()
            out = torch.sparse_coo_tensor(used[None], values, ctx.shape, is_coalesced=True)
            return out, None, None, None
        crow = torch.zeros(rows + 1, dtype=torch.int64, device=grad.device)
        torch.cumsum(torch.bincount(tokens, minlength=rows), 0, out=crow[1:])
        return (
            _csr(crow, columns, weights, (rows, len(lengths))) @ grad.contiguous(),
            None,
            None,
            None,
        )


def drop_lists(bag: Bag, p: float, rng: np.random.Generator) -> Bag:
    """``bag`` with each whole list emptied with probability ``p``."""
    kept = torch.from_numpy(rng.random(len(bag.offsets) - 1) >= p).to(bag.offsets.device)
    starts, ends = bag.offsets[:-1], bag.offsets[1:]
    positions, offsets = gather_ranges(starts, torch.where(kept, ends, starts))
    return Bag(bag.tokens[positions], offsets)


class Dropout(nn.Module):
    """Inverted dropout whose CPU masks come from NumPy's PCG64 stream.

    Torch's CPU Bernoulli draws cost ~5 ms a step of ml-100k (four dropouts of [512, ~300]);
    16-bit draws cut from NumPy's raw PCG64 output cost a tenth of that (and bool -> float is a
    slow kernel in torch, uint8 -> float a fast one). ``p`` is rounded to 1/65536 and the
    kept values scaled by the exact inverse keep rate, so the expectation is unchanged.
    """

    def __init__(self, p: float, rng: np.random.Generator):
        super().__init__()
        self.p, self.rng = p, rng
        self.threshold = round(p * 65536)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.threshold == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        n = x.numel()  # raw 64-bit outputs cut into 16-bit draws: 3x numpy's integers()
        bits = self.rng.bit_generator.random_raw(-(-n // 4)).view(np.uint16)[:n]
        keep = torch.from_numpy(np.greater_equal(bits, self.threshold).view(np.uint8))
        keep = keep.view(x.shape)
        return x * keep.to(x.dtype).mul_(65536 / (65536 - self.threshold))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Tower(nn.Module):
    """One side of the two-tower model.

    ``forward`` takes a batch of tower inputs (``models.inputs``) and returns unit vectors
    ``[batch, out_dim]``.
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
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.id_dropout = id_dropout
        self.history_dropout = history_dropout
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.embeddings = nn.ModuleDict()
        self.encoders = nn.ModuleDict()  # sequence features: their causal encoders
        width = 0
        for feature in spec.features:
            if feature.kind == "numeric":
                width += 2
                continue
            rows = spec.cardinality(feature, item_vocab_size)
            dim = spec.dims[feature.name]
            pad = 0 if feature.kind in LISTS else None
            table = nn.Embedding(rows, dim, padding_idx=pad)
            nn.init.normal_(table.weight, std=0.05)
            if feature.name in spec.one_hot:  # a fixed identity: row r is the r-th unit vector
                with torch.no_grad():
                    table.weight.copy_(torch.eye(rows, dim))
                table.weight.requires_grad_(False)
            elif pad is not None:
                with torch.no_grad():
                    table.weight[pad].zero_()
            self.embeddings[feature.name] = table
            if feature.kind == "sequence":
                self.encoders[feature.name] = SequenceEncoder(
                    dim, feature.max_len, feature.encoder, feature.blocks, feature.heads
                )
            width += dim
        layers: list[nn.Module] = [Dropout(dropout, self.rng)]  # on the concatenated embeddings
        for size in hidden:
            layers += [nn.Linear(width, size), nn.GELU(), Dropout(dropout, self.rng)]
            width = size
        layers.append(nn.Linear(width, out_dim))
        self.mlp = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, inputs: TowerInputs) -> Tensor:
        parts = []
        for feature in self.spec.features:
            value = inputs[feature.name]
            if isinstance(value, Pooled):  # embedded by a sharded table (models.distributed)
                parts.append(value.vectors)
                continue
            if feature.kind == "numeric":
                assert isinstance(value, Tensor)
                parts.append(value.float())
                continue
            table = self.embeddings[feature.name]
            assert isinstance(table, nn.Embedding)
            if feature.kind == "sequence":
                assert isinstance(value, Bag)
                encoder = self.encoders[feature.name]
                assert isinstance(encoder, SequenceEncoder)
                parts.append(sequence.encode(value, table.weight, encoder))
                continue
            if feature.kind in POOLED:
                assert isinstance(value, Bag)
                if feature.kind == "history" and self.training and self.history_dropout > 0:
                    value = drop_lists(value, self.history_dropout, self.rng)
                parts.append(pool(value, table.weight, table.sparse))
                continue
            assert isinstance(value, Tensor)
            if feature.kind == "id" and self.training and self.id_dropout > 0:
                drop = torch.from_numpy(self.rng.random(value.shape) < self.id_dropout)
                value = value.masked_fill(drop.to(value.device), UNKNOWN)
            parts.append(lookup(value, table.weight, table.sparse))
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
        # A sequence encoder runs as its module (it has no dropout: the same in both modes).
        self.encoders = dict(tower.encoders.items())
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
            elif not isinstance(layer, Dropout | nn.Dropout):  # the identity when evaluating
                raise TypeError(f"FrozenTower cannot run a {type(layer).__name__} layer")

    def __call__(self, inputs: TowerInputs) -> Tensor:
        parts = []
        for name, kind, weight in self.features:
            value = inputs[name]
            if weight is None:
                assert isinstance(value, Tensor)
                parts.append(value.float())
            elif kind == "sequence":
                assert isinstance(value, Bag)
                encoder = self.encoders[name]
                assert isinstance(encoder, SequenceEncoder)
                parts.append(sequence.encode(value, weight, encoder))
            elif kind in POOLED:
                assert isinstance(value, Bag)
                parts.append(pool(value, weight))
            else:
                assert isinstance(value, Tensor)
                parts.append(F.embedding(value, weight))
        hidden = torch.cat(parts, dim=-1)
        for op, weight, bias, approximate in self.layers:
            if op == "linear":
                assert weight is not None
                hidden = F.linear(hidden, weight, bias)
            else:
                hidden = F.gelu(hidden, approximate=approximate)
        return F.normalize(hidden, dim=-1)
