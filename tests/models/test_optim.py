"""RowAdam: SparseAdam's update, on the used rows only."""

from __future__ import annotations

import pytest
import torch

from models.optim import RowAdam


def trained(optimiser_class: type[torch.optim.Optimizer]) -> torch.Tensor:
    torch.manual_seed(0)
    table = torch.nn.Embedding(8, 4, sparse=True)
    optimiser = optimiser_class(table.parameters(), lr=0.05)
    for rows in ([0, 1, 1], [2], [7, 0], [1, 1, 1, 3]):
        optimiser.zero_grad()
        (table(torch.tensor(rows)) ** 2).sum().backward()
        optimiser.step()
    return table.weight.detach()


def test_row_adam_matches_sparse_adam_and_leaves_untouched_rows_alone() -> None:
    ours, theirs = trained(RowAdam), trained(torch.optim.SparseAdam)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    torch.manual_seed(0)
    start = torch.nn.Embedding(8, 4).weight.detach()
    assert torch.equal(ours[[4, 5, 6]], start[[4, 5, 6]])  # never in a batch
    assert not torch.equal(ours[[0, 1, 2, 3, 7]], start[[0, 1, 2, 3, 7]])


def test_row_adam_refuses_dense_gradients() -> None:
    weight = torch.nn.Parameter(torch.ones(3, 2))
    optimiser = RowAdam([weight])
    weight.sum().backward()
    with pytest.raises(ValueError, match="sparse gradients"):
        optimiser.step()
