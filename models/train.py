"""The training loop: batches of (user, positive item) with the chosen loss, early stopping."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from models import losses
from models.config import TrainSettings
from models.encoding import EncodedData, Histories
from models.evaluate import interaction_matrix
from models.sampling import PopularitySampler, UniformSampler, hard_negatives, in_batch_log_q
from models.teacher import EaseTeacher
from models.two_tower import TwoTower

log = logging.getLogger(__name__)


def gather(
    features: dict[str, np.ndarray], rows: np.ndarray, device: torch.device | str = "cpu"
) -> dict[str, Tensor]:
    """Rows of encoded features as tensors on ``device``."""
    return {name: torch.from_numpy(values[rows]).to(device) for name, values in features.items()}


@dataclass
class Inputs:
    """Everything the towers read for a set of users: encoded features plus histories."""

    data: EncodedData
    histories: Histories
    history_features: list[tuple[str, int]]  # (feature name, max_len)
    device: torch.device | str = "cpu"  # where users() and items() put their tensors

    def users(self, rows: np.ndarray, entries: np.ndarray | None = None) -> dict[str, Tensor]:
        """User inputs; history before each sequence entry (the latest when ``entries`` is None)."""
        out = gather(self.data.user_features, rows, self.device)
        for name, max_len in self.history_features:
            if entries is None:
                tokens = self.histories.latest(rows, max_len, self.data.item_tokens)
            else:
                tokens = self.histories.before(entries, max_len, self.data.item_tokens)
            out[name] = torch.from_numpy(tokens).to(self.device)
        return out

    def items(self, rows: np.ndarray | Tensor) -> dict[str, Tensor]:
        return gather(self.data.item_features, np.asarray(rows), self.device)


@torch.no_grad()
def all_item_vectors(model: TwoTower, inputs: Inputs, batch: int = 8192) -> Tensor:
    """Item vectors of the whole catalogue ``[n_items, dim]``, on the CPU."""
    model.eval()
    rows = np.arange(inputs.data.n_items)
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


class TwoTowerTrainTask:
    """Turns one batch of training entries into a loss value for the configured loss."""

    def __init__(self, model: TwoTower, inputs: Inputs, settings: TrainSettings, seed: int):
        self.model, self.inputs, self.settings = model, inputs, settings
        data = inputs.data
        train_items = data.inter_items[inputs.histories.source_rows]
        self.counts = torch.from_numpy(np.bincount(train_items, minlength=data.n_items)).float()
        self.generator = torch.Generator().manual_seed(seed)
        if settings.negative_sampler == "uniform":
            self.sampler: UniformSampler | PopularitySampler = UniformSampler(
                data.n_items, self.generator
            )
        else:
            self.sampler = PopularitySampler(self.counts + 1.0, 0.75, self.generator)
        self.item_cache: Tensor | None = None  # for hard negatives, refreshed every epoch
        users = data.inter_users[inputs.histories.source_rows]
        self.known_keys = np.unique(users * data.n_items + train_items)  # sorted (user, item) keys
        self.user_positives = [
            torch.from_numpy(np.unique(train_items[s:e]))
            for s, e in zip(
                inputs.histories.offsets[:-1], inputs.histories.offsets[1:], strict=True
            )
        ]
        self.teacher: EaseTeacher | None = None
        if settings.teacher == "ease":
            train = interaction_matrix(users, train_items, data.n_users, data.n_items)
            self.teacher = EaseTeacher(train, settings.teacher_reg, settings.teacher_temperature)

    def loss(self, entries: np.ndarray) -> Tensor:
        """The configured loss of a batch, plus the teacher's term when there is one."""
        users = self.inputs.data.inter_users[self.inputs.histories.source_rows[entries]]
        loss = self.task_loss(entries, users)
        if self.teacher is None or self.settings.teacher_weight == 0:
            return loss
        return loss + self.settings.teacher_weight * self.teacher_loss(users)

    def teacher_loss(self, users: np.ndarray) -> Tensor:
        """Distillation over the whole catalogue for each distinct user of a batch.

        The user vector is the one serving computes (latest history), since the teacher
        speaks of the user's whole training set.
        """
        assert self.teacher is not None
        distinct = np.unique(users)
        probs, known = self.teacher.targets(distinct)
        device = self.inputs.device
        user_vecs = self.model.user_vectors(self.inputs.users(distinct))
        item_vecs = self.model.item_vectors(self.inputs.items(np.arange(self.inputs.data.n_items)))
        return losses.distillation(
            user_vecs,
            item_vecs,
            probs.to(device),
            self.model.config.temperature,
            known.to(device),
        )

    def task_loss(self, entries: np.ndarray, users: np.ndarray) -> Tensor:
        s, h, device = self.settings, self.inputs.histories, self.inputs.device
        pos_rows = h.items[entries]
        user_vecs = self.model.user_vectors(self.inputs.users(users, entries))
        pos_vecs = self.model.item_vectors(self.inputs.items(pos_rows))
        temperature = self.model.config.temperature
        if s.loss != "listwise":
            neg_rows, _ = self.sampler.sample(len(entries) * s.num_negatives)
            neg_vecs = self.model.item_vectors(self.inputs.items(neg_rows.numpy()))
            neg_vecs = neg_vecs.view(len(entries), s.num_negatives, -1)
            if s.loss == "pointwise":
                return losses.pointwise_bce(user_vecs, pos_vecs, neg_vecs, temperature)
            if s.loss == "pairwise-hinge":
                return losses.pairwise_hinge(user_vecs, pos_vecs, neg_vecs, s.margin)
            return losses.pairwise_logistic(user_vecs, pos_vecs, neg_vecs, temperature)
        # Samplers, counts and known-positive keys live on the CPU; what meets vectors moves.
        pos_t = torch.from_numpy(pos_rows)
        kwargs: dict[str, Tensor | None] = {}
        columns = [pos_rows]
        if s.log_q:
            kwargs["pos_log_q"] = (s.log_q_weight * in_batch_log_q(self.counts, pos_t)).to(device)
        if s.sampled_negatives:
            neg_rows, neg_log_q = self.sampler.sample(s.sampled_negatives)
            columns.append(neg_rows.numpy())
            kwargs["neg_vectors"] = self.model.item_vectors(self.inputs.items(neg_rows.numpy()))
            kwargs["neg_item_rows"] = neg_rows.to(device)
            kwargs["neg_log_q"] = (s.log_q_weight * neg_log_q).to(device) if s.log_q else None
        if s.hard_negatives and self.item_cache is not None:
            positives = [self.user_positives[u] for u in users]
            hard = hard_negatives(
                user_vecs.detach().cpu(),
                self.item_cache,
                positives,
                s.hard_negatives,
                s.hard_skip_top,
                self.generator,
            )
            hard_vecs = self.model.item_vectors(self.inputs.items(hard.reshape(-1).numpy()))
            kwargs["hard_vectors"] = hard_vecs.view(len(entries), s.hard_negatives, -1)
            kwargs["hard_item_rows"] = hard.to(device)
        mask = None
        if s.mask_known_positives:
            mask = self._known(users, np.concatenate(columns))
            if "hard_vectors" in kwargs:  # mined hard negatives already skip known positives
                mask = torch.cat(
                    [mask, torch.zeros(len(users), s.hard_negatives, dtype=torch.bool)], 1
                )
            mask = mask.to(device)
        return losses.sampled_softmax(
            user_vecs,
            pos_vecs,
            pos_t.to(device),
            temperature,
            remove_accidental_hits=s.remove_accidental_hits,
            negative_mask=mask,
            **kwargs,  # type: ignore[arg-type]
        )

    def _known(self, users: np.ndarray, item_rows: np.ndarray) -> Tensor:
        """``[len(users), len(item_rows)]``: whether each user has each item in training."""
        keys = users[:, None] * self.inputs.data.n_items + item_rows[None, :]
        where = np.searchsorted(self.known_keys, keys).clip(max=len(self.known_keys) - 1)
        return torch.from_numpy(self.known_keys[where] == keys)


@dataclass
class TrainResult:
    model: TwoTower
    history: list[dict[str, float]] = field(default_factory=list)
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

    With ``validate=None`` it trains exactly ``settings.epochs`` epochs and keeps the last.
    """
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model.to(inputs.device)
    task = TwoTowerTrainTask(model, inputs, settings, settings.seed)
    optimisers = make_optimisers(model, settings)
    entries = np.arange(len(inputs.histories.items))
    result = TrainResult(model)
    best_state, stale = copy.deepcopy(model.state_dict()), 0
    ema = WeightAverage(model, settings.ema_decay) if settings.ema_decay > 0 else None
    bar = tqdm(range(1, settings.epochs + 1), desc=f"train {settings.loss}", disable=not progress)
    for epoch in bar:
        if settings.hard_negatives and epoch > 1:
            task.item_cache = all_item_vectors(model, inputs)
        model.train()
        order = rng.permutation(entries)
        total, batches = 0.0, 0
        for start in range(0, len(order), settings.batch_size):
            loss = task.loss(order[start : start + settings.batch_size])
            for optimiser in optimisers:
                optimiser.zero_grad(set_to_none=True)
            loss.backward()
            for optimiser in optimisers:
                optimiser.step()
            if ema is not None:
                ema.update(model)
            total, batches = total + loss.item(), batches + 1
        row = {"epoch": float(epoch), "loss": total / max(batches, 1)}
        result.history.append(row)
        if validate is None:
            result.best_epoch = epoch
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            continue
        with averaged(ema, model):  # what is validated (and kept) is what would be shipped
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
    elif ema is not None:
        ema.copy_to(model)
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            module.sparse = False  # serving and export never need sparse gradients
    model.eval()
    return result


class WeightAverage:
    """Exponential moving average of a model's parameters, updated after every optimiser step.

    ``shadow = decay * shadow + (1 - decay) * weights``, starting from the initial weights, which
    keep a share of ``decay ** steps``: besides smoothing the last epochs' noise, the average
    shrinks towards the small random initialisation, a regulariser (on ml-100k random-811 a
    warm-up that discounts the start, ``min(decay, (1 + n) / (10 + n))``, scored lower: 0.276
    against 0.282 Recall@10 on seed 0). Choose ``decay`` with the run's step count in mind.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, param in model.named_parameters():
            self.shadow[name].lerp_(param.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for name, param in model.named_parameters():
            param.copy_(self.shadow[name])


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


def make_optimisers(model: TwoTower, settings: TrainSettings) -> list[torch.optim.Optimizer]:
    """Adam for dense parameters; SparseAdam for embedding tables of ``sparse_rows`` rows or more.

    A dense Adam step touches every row of a million-row table; with sparse gradients only the
    rows a batch used are updated (lazy Adam), which is what makes big catalogues trainable.
    """
    sparse: list[torch.Tensor] = []
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings >= settings.sparse_rows:
            module.sparse = True
            sparse.append(module.weight)
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    out: list[torch.optim.Optimizer] = [
        torch.optim.Adam(dense, lr=settings.lr, weight_decay=settings.weight_decay)
    ]
    if sparse:
        out.append(torch.optim.SparseAdam(sparse, lr=settings.lr))
    return out
