"""Exponential moving average of the weights, exact and lazy for sparsely trained tables.

``avg_t = (1 - d) * sum_s d^(t - s) * w_s / (1 - d^t)`` over the weights ``w_1 .. w_t`` after
each optimiser step: an exponential average of the trajectory with Adam's bias correction, so
the random initialisation never enters it and a run of any length averages what it trained.

Dense parameters take one fused ``lerp`` per step. An embedding table trained with sparse
gradients (``SparseAdam`` changes only the rows a batch touched) would pay a pass over every
row per step for nothing: between two touches a row's weights are constant, and ``k`` steps
of the recurrence with a constant ``w`` are ``m + (1 - d^k) * (w - m)``. So a row's average is
brought up to date only when the row is touched and when the average is read; the result is
the same as updating every row every step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class WeightAverage:
    """The bias-corrected EMA of ``model``'s parameters; ``sparse`` names SparseAdam tables."""

    def __init__(self, model: nn.Module, decay: float, sparse: set[str] = frozenset()):  # type: ignore[assignment]
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        named = dict(model.named_parameters())
        self.dense_names = [name for name in named if name not in sparse]
        self.sparse_names = [name for name in named if name in sparse]
        self.shadow = {name: torch.zeros_like(p.detach()) for name, p in named.items()}
        self.last = {  # the step each sparse row's shadow is up to date with
            name: torch.zeros(len(named[name]), dtype=torch.int64, device=named[name].device)
            for name in self.sparse_names
        }
        self.steps = 0
        self._touched: dict[str, Tensor] = {}

    @torch.no_grad()
    def before_step(self, model: nn.Module) -> None:
        """Call after ``backward`` and before the optimiser step: catches touched rows up."""
        named = dict(model.named_parameters())
        self._touched = {}
        for name in self.sparse_names:
            grad = named[name].grad
            if grad is None:
                continue
            rows = grad.coalesce().indices()[0] if grad.is_sparse else torch.arange(len(grad))
            self._catch_up(name, named[name], rows, self.steps)
            self._touched[name] = rows

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Call after the optimiser step: one step of the average."""
        self.steps += 1
        named = dict(model.named_parameters())
        if self.dense_names:
            torch._foreach_lerp_(
                [self.shadow[n] for n in self.dense_names],
                [named[n].detach() for n in self.dense_names],
                1.0 - self.decay,
            )
        for name in self.sparse_names:  # untouched rows are caught up when read
            rows = self._touched.get(name)
            if rows is None:
                continue
            shadow = self.shadow[name]
            shadow[rows] = shadow[rows].lerp_(named[name].detach()[rows], 1.0 - self.decay)
            self.last[name][rows] = self.steps

    def _catch_up(self, name: str, param: Tensor, rows: Tensor, step: int) -> None:
        """Rows of ``name`` brought to ``step``, their weights constant since their last step."""
        lag = (step - self.last[name][rows]).to(param.dtype)
        keep = torch.pow(self.decay, lag).unsqueeze(-1)  # d^k
        shadow = self.shadow[name]
        shadow[rows] = param.detach()[rows].lerp(shadow[rows], keep)
        self.last[name][rows] = step

    @torch.no_grad()
    def averaged(self, model: nn.Module) -> dict[str, Tensor]:
        """The averaged value of every parameter (the live weights before the first step)."""
        named = dict(model.named_parameters())
        if self.steps == 0:
            return {name: p.detach().clone() for name, p in named.items()}
        for name in self.sparse_names:
            everything = torch.arange(len(named[name]), device=named[name].device)
            self._catch_up(name, named[name], everything, self.steps)
        correction = 1.0 - self.decay**self.steps
        return {name: shadow / correction for name, shadow in self.shadow.items()}

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        averaged = self.averaged(model)
        for name, param in model.named_parameters():
            param.copy_(averaged[name])


@contextmanager
def averaged(ema: WeightAverage | None, model: nn.Module) -> Iterator[None]:
    """Inside the block ``model`` holds the averaged weights; afterwards its own again."""
    if ema is None:
        yield
        return
    live = {name: p.detach().clone() for name, p in model.named_parameters()}
    ema.copy_to(model)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(live[name])
