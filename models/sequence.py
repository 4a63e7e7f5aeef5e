"""Sequence encoders: a user's items read in order, for ``sequence`` features.

A ``history`` feature mean-pools the items; a ``sequence`` feature embeds them (the same
item-id tokens, oldest first, the latest ``max_len`` kept: ``models.inputs``) and reads them
with a causal encoder, whose output at the latest item is the feature's part of the tower's
input:

- ``attention``: pre-norm blocks of causal self-attention and a feed-forward layer (SASRec's
  shape), with a learned embedding of each position's distance from the latest item;
- ``gru``: one GRU layer.

Both are causal, so a list's output depends on its own tokens only, never on the padding that
a batch of longer lists adds after them (``tests/models/test_sequence.py``). A training example
sees the history strictly before its own interaction (``models.inputs.HistoryTable.before``):
every position of every training sequence is one next-item example.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.inputs import Bag


def padded(bag: Bag) -> tuple[Tensor, Tensor]:
    """``bag``'s lists as ``[B, L]`` token rows, oldest first, zero-padded after, and lengths."""
    lengths = bag.offsets.diff()
    width = max(int(lengths.max()) if len(lengths) else 0, 1)
    out = torch.zeros(len(lengths), width, dtype=torch.int64, device=bag.tokens.device)
    rows = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
    columns = torch.arange(len(bag.tokens), device=lengths.device) - bag.offsets[:-1][rows]
    out[rows, columns] = bag.tokens
    return out, lengths


class Block(nn.Module):
    """Pre-norm causal self-attention, then a feed-forward layer, each with a residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"sequence encoder: {heads} heads do not divide dimension {dim}")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff1, self.ff2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, dim))
        return x + self.ff2(F.gelu(self.ff1(self.norm2(x))))


class SequenceEncoder(nn.Module):
    """``[B, L, D]`` embedded lists (zero-padded after ``lengths``) -> ``[B, D]``: the output
    at each list's latest item (zeros for an empty list)."""

    def __init__(self, dim: int, max_len: int, encoder: str = "attention", blocks: int = 2,
                 heads: int = 1):  # fmt: skip
        super().__init__()
        self.encoder = encoder
        if encoder == "gru":
            self.gru = nn.GRU(dim, dim, batch_first=True)
        else:
            self.positions = nn.Embedding(max_len, dim)
            nn.init.normal_(self.positions.weight, std=0.02)
            self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(blocks))
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        last = (lengths - 1).clamp(min=0)
        if self.encoder == "gru":
            hidden = self.gru(x)[0]
        else:
            steps = torch.arange(x.shape[1], device=x.device)
            distance = (last[:, None] - steps[None, :]).clamp(
                min=0, max=len(self.positions.weight) - 1
            )
            hidden = x + self.positions(distance)
            for block in self.blocks:
                hidden = block(hidden)
            hidden = self.norm(hidden)
        out = hidden[torch.arange(len(x), device=x.device), last]
        return out * (lengths > 0).to(out.dtype)[:, None]


def encode(bag: Bag, weight: Tensor, encoder: SequenceEncoder) -> Tensor:
    """A ``sequence`` feature's part of the tower input ``[B, D]``: embed, then encode."""
    tokens, lengths = padded(bag)
    return encoder(F.embedding(tokens, weight), lengths)
