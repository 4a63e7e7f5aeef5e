"""The training loop: batches of (user, positive item) with the chosen loss, early stopping."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from models import distributed
from models.averaging import WeightAverage, averaged
from models.config import TrainSettings
from models.inputs import Inputs
from models.optim import RowAdam
from models.task import TwoTowerTrainTask
from models.two_tower import TwoTower

log = logging.getLogger(__name__)
__all__ = ["Inputs", "TwoTowerTrainTask", "WeightAverage", "averaged", "train_model"]


@torch.no_grad()
def all_item_vectors(model: TwoTower, inputs: Inputs, batch: int = 8192) -> Tensor:
    """Item vectors of the whole catalogue ``[n_items, dim]``, on the CPU."""
    model.eval()
    rows = torch.arange(inputs.data.n_items)
    parts = [
        model.item_vectors(inputs.items(rows[i : i + batch])) for i in range(0, len(rows), batch)
    ]
    return torch.cat(parts).cpu()


@torch.no_grad()
def user_vectors(model: TwoTower, inputs: Inputs, rows: np.ndarray, batch: int = 4096) -> Tensor:
    """User vectors from features and latest history ``[len(rows), dim]``, on the CPU."""
    model.eval()
    parts = [
        model.user_vectors(inputs.users(rows[i : i + batch])) for i in range(0, len(rows), batch)
    ]
    return torch.cat(parts).cpu() if parts else torch.zeros(0, model.config.dim)


@dataclass
class TrainResult:
    model: TwoTower
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float = -math.inf


def train_model(
    model: TwoTower,
    inputs: Inputs,
    settings: TrainSettings,
    validate: Callable[[TwoTower], dict[str, float]] | None,
    progress: bool = True,
) -> TrainResult:
    """Train with early stopping on ``validate(model)[settings.metric]``; returns the best model.

    With a weight average (``ema_decay`` > 0) the average is validated and kept. With
    ``validate=None`` it trains exactly ``settings.epochs`` epochs and keeps the last.
    """
    if distributed.active():  # under torchrun: id tables sharded over the ranks
        return distributed.train_sharded(
            model, inputs, settings, validate, progress, TrainResult(model)
        )
    torch.manual_seed(settings.seed)
    model.reseed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model.to(inputs.device)
    task = TwoTowerTrainTask(model, inputs, settings, settings.seed)
    stepper = Stepper(model, settings)
    entries = np.arange(len(inputs.histories.items))
    result = TrainResult(model)
    best_state, stale = copy.deepcopy(model.state_dict()), 0
    bar = tqdm(range(1, settings.epochs + 1), desc=f"train {settings.loss}", disable=not progress)
    for epoch in bar:
        if settings.hard_negatives and epoch > 1:
            task.item_cache = all_item_vectors(model, inputs)
        model.train()
        order = torch.from_numpy(rng.permutation(entries))
        losses = []
        steps = tqdm(
            range(0, len(order), settings.batch_size),
            desc=f"epoch {epoch}",
            leave=False,
            disable=not progress,
        )
        for start in steps:
            losses.append(stepper.step(task.loss(order[start : start + settings.batch_size])))
        row: dict[str, Any] = {"epoch": float(epoch)}
        row["loss"] = float(torch.stack(losses).mean()) if losses else 0.0
        result.history.append(row)
        if validate is None:
            result.best_epoch = epoch
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            continue
        with averaged(stepper.ema, model):  # what is validated (and kept) is what would ship
            metrics = validate(model)
            score = metrics[settings.metric]
            if score > result.best_metric:
                result.best_metric, result.best_epoch, stale = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
        row.update({f"valid_{k}": v for k, v in metrics.items()})
        bar.set_postfix(loss=f"{row['loss']:.4f}", **{settings.metric: f"{score:.4f}"})
        log.info("epoch %d loss %.4f valid %s %.4f", epoch, row["loss"], settings.metric, score)
        if stale >= settings.patience:
            break
    if validate is not None:
        model.load_state_dict(best_state)
    elif stepper.ema is not None:
        stepper.ema.copy_to(model)
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            module.sparse = False  # serving and export never need sparse gradients
    model.eval()
    return result


class Stepper:
    """What a training step does with a batch's loss: backward, optimisers, weight average.

    ``train_model`` and ``bench/train_throughput.py`` both step through this class, so the
    bench times the loop training runs.
    """

    def __init__(self, model: TwoTower, settings: TrainSettings):
        self.model = model
        self.optimisers, sparse = make_optimisers(model, settings)
        named = dict(model.named_parameters())
        self.sparse = [named[name] for name in sorted(sparse)]
        self.ema = (
            WeightAverage(model, settings.ema_decay, sparse, settings.ema_start_share)
            if settings.ema_decay > 0
            else None
        )

    def step(self, loss: Tensor) -> Tensor:
        """One optimiser step on ``loss``; returns it detached (no device sync)."""
        for optimiser in self.optimisers:
            optimiser.zero_grad(set_to_none=True)
        loss.backward()
        for param in self.sparse:  # once, for the average and the optimiser
            if param.grad is not None:
                param.grad = param.grad.coalesce()
        if self.ema is not None:
            self.ema.before_step(self.model)
        for optimiser in self.optimisers:
            optimiser.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss.detach()


def make_optimisers(
    model: TwoTower, settings: TrainSettings
) -> tuple[list[torch.optim.Optimizer], set[str]]:
    """Adam for dense parameters (fused); lazy Adam (RowAdam) for tables of ``sparse_rows`` rows
    or more.

    A dense Adam step touches every row of a million-row table; with sparse gradients only the
    rows a batch used are updated (lazy Adam), which is what makes big catalogues trainable.
    Returns the optimisers and the names of the sparse parameters.
    """
    sparse: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings >= settings.sparse_rows:
            module.sparse = True
            sparse.add(f"{name}.weight")
    named = dict(model.named_parameters())
    dense = [p for name, p in named.items() if name not in sparse]
    fused = all(p.device.type in ("cpu", "cuda") for p in dense)
    out: list[torch.optim.Optimizer] = [
        torch.optim.Adam(dense, lr=settings.lr, weight_decay=settings.weight_decay, fused=fused)
    ]
    if sparse:
        out.append(RowAdam([named[n] for n in sorted(sparse)], lr=settings.lr))
    return out, sparse
