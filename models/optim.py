"""RowAdam: lazy Adam for embedding tables with sparse gradients.

The same update as ``torch.optim.SparseAdam`` (moments and weights change only in the rows a
batch used; bias correction by the table's step count), computed with ``index_select`` /
``index_copy_`` on the used rows instead of sparse-tensor arithmetic. On a 1M-item catalogue
(three tables of 0.2M-1M rows, batch 512, one thread) SparseAdam's step took 18 ms of a 66 ms
training step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor


class RowAdam(torch.optim.Optimizer):
    """Adam over the rows a sparse gradient names; other rows, and their moments, stay put."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        if not lr > 0 or not eps > 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(
                f"RowAdam needs lr > 0, eps > 0, betas in [0, 1): {lr}, {eps}, {betas}"
            )
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                if not grad.is_sparse:
                    raise ValueError("RowAdam takes sparse gradients; use Adam for dense ones")
                grad = grad.coalesce()
                rows, values = grad.indices()[0], grad.values()
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                exp_avg = state["exp_avg"].index_select(0, rows).lerp_(values, 1 - beta1)
                exp_avg_sq = state["exp_avg_sq"].index_select(0, rows)
                exp_avg_sq.mul_(beta2).addcmul_(values, values, value=1 - beta2)
                state["exp_avg"].index_copy_(0, rows, exp_avg)
                state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
                step = state["step"]
                step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                update = exp_avg.div_(exp_avg_sq.sqrt_().add_(group["eps"]))
                param.index_add_(0, rows, update, alpha=-step_size)
