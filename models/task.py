"""TwoTowerTrainTask: one batch of training entries -> the configured loss.

Everything a step looks up is built once as tensors: each entry's user and item, the item
log-probabilities of the logQ correction, every user's training items (CSR) for the
known-positive mask. A step is index operations, two tower passes and the loss.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from models import losses
from models.config import TrainSettings
from models.encoding import EncodedData
from models.evaluate import interaction_matrix
from models.inputs import Inputs, TowerInputs, gather_ranges
from models.sampling import PopularitySampler, UniformSampler, hard_negatives, in_batch_log_q
from models.teacher import EaseTeacher
from models.two_tower import TwoTower


class KnownItems:
    """Each user's distinct training items, for the known-positive mask.

    Up to ``dense_cells`` users x items the mask is two row gathers from a dense 0/1 table
    (ml-100k: 1.6M cells, 6 MB; 0.9 ms for 512 x 512 on one thread). Past that it walks the
    batch users' CSR lists (work: their training items, not ``users x columns`` lookups, whose
    count grows with the batch squared; 5 ms on ml-100k).
    """

    def __init__(
        self,
        users: np.ndarray,
        items: np.ndarray,
        n_users: int,
        n_items: int,
        device: torch.device | str = "cpu",
        dense_cells: int = 16_000_000,
    ):
        keys = np.unique(users * n_items + items)  # sorted: by user, then item
        self.items = torch.from_numpy(keys % n_items).to(device)
        offsets = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(keys // n_items, minlength=n_users), out=offsets[1:])
        self.offsets = torch.from_numpy(offsets).to(device)
        self._column = torch.full((n_items,), -1, dtype=torch.int64, device=device)
        self.table: Tensor | None = None
        if n_users * n_items <= dense_cells:
            table = np.zeros(n_users * n_items, dtype=np.float32)
            table[keys] = 1.0
            self.table = torch.from_numpy(table.reshape(n_users, n_items)).to(device)

    def of(self, user: int) -> Tensor:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def mask(self, users: Tensor, columns: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """``[len(users), len(columns)]``: 1 where a user has a column's item, else 0.

        Float, not bool, and no boolean selection: the loss adds the mask, and bool kernels
        (``nonzero``, ``masked_fill``) are several times slower than arithmetic on the CPU.
        """
        if self.table is not None:
            return self.table.index_select(0, users).index_select(1, columns).to(dtype)
        device = users.device
        distinct_users, user_of_row = torch.unique(users, return_inverse=True)
        order = torch.sort(columns, stable=True).indices  # columns grouped by item
        distinct_items, repeats = torch.unique_consecutive(
            columns.index_select(0, order), return_counts=True
        )
        first = torch.cumsum(repeats, 0) - repeats  # where each item's run starts in ``order``
        # Items outside the batch map to a last, empty run.
        first, repeats = (torch.cat([t, t.new_zeros(1)]) for t in (first, repeats))
        self._column[distinct_items] = torch.arange(len(distinct_items), device=device)
        positions, offsets = gather_ranges(
            self.offsets.index_select(0, distinct_users),
            self.offsets.index_select(0, distinct_users + 1),
        )
        run = self._column.index_select(0, self.items.index_select(0, positions))
        self._column[distinct_items] = -1
        run = torch.where(run < 0, len(distinct_items), run)
        owner = torch.repeat_interleave(
            torch.arange(len(distinct_users), device=device), offsets.diff()
        )
        # Each (user, batch item) pair marks every column holding that item.
        spots, spans = gather_ranges(
            first.index_select(0, run), (first + repeats).index_select(0, run)
        )
        known = torch.zeros(len(distinct_users) * len(columns), dtype=dtype, device=device)
        flat = torch.repeat_interleave(owner, spans.diff()) * len(columns) + order.index_select(
            0, spots
        )
        known.index_fill_(0, flat, 1)
        return known.view(len(distinct_users), len(columns)).index_select(0, user_of_row)


def entry_weights(data: EncodedData, source_rows: np.ndarray, name: str) -> Tensor | None:
    """Each training entry's loss weight from the interactions field ``name`` (mean 1), or
    None without one. Values must be finite and >= 0, with a positive sum."""
    if not name:
        return None
    if name not in data.inter_numbers:
        raise ValueError(
            f"[train] weight_field {name!r} is not a float field of the interactions; "
            f"float fields: {sorted(data.inter_numbers)}"
        )
    values = data.inter_numbers[name][source_rows]
    bad = np.flatnonzero(~(np.isfinite(values) & (values >= 0)))
    if len(bad) or values.sum() <= 0:
        where = f"{len(bad)} training rows (first: interaction row {source_rows[bad[0]]})"
        raise ValueError(
            f"[train] weight_field {name!r}: {where if len(bad) else 'all weights are 0'}; "
            "weights must be finite numbers >= 0 with a positive sum"
        )
    return torch.from_numpy(values / values.mean()).float()


class TwoTowerTrainTask:
    """Turns one batch of training entries into a loss value for the configured loss."""

    def __init__(self, model: TwoTower, inputs: Inputs, settings: TrainSettings, seed: int):
        self.model, self.inputs, self.settings = model, inputs, settings
        data, device = inputs.data, inputs.device
        entry_users = data.inter_users[inputs.histories.source_rows]
        entry_items = inputs.histories.items
        self.entry_users = torch.from_numpy(entry_users).to(device)
        self.entry_items = torch.from_numpy(entry_items).to(device)
        counts = torch.from_numpy(np.bincount(entry_items, minlength=data.n_items)).float()
        self.counts = counts
        self.generator = torch.Generator().manual_seed(seed)
        if settings.negative_sampler == "uniform":
            self.sampler: UniformSampler | PopularitySampler = UniformSampler(
                data.n_items, self.generator
            )
        else:
            self.sampler = PopularitySampler(counts + 1.0, 0.75, self.generator)
        # log P(item is a batch positive), looked up per step (checked once, here)
        self.pos_log_q = (
            settings.log_q_weight * in_batch_log_q(counts, torch.arange(len(counts)))
        ).to(device)
        self.weights = entry_weights(data, inputs.histories.source_rows, settings.weight_field)
        if self.weights is not None:
            self.weights = self.weights.to(device)
        self.known = KnownItems(entry_users, entry_items, data.n_users, data.n_items, device)
        self.item_cache: Tensor | None = None  # for hard negatives, refreshed every epoch
        self.teacher: EaseTeacher | None = None
        if settings.teacher == "ease":
            train = interaction_matrix(entry_users, entry_items, data.n_users, data.n_items)
            self.teacher = EaseTeacher(train, settings.teacher_reg, settings.teacher_temperature)

    def user_vectors(self, inputs: TowerInputs) -> Tensor:
        """The user tower on a batch's inputs (a sharded run embeds its id tables first)."""
        return self.model.user_vectors(inputs)

    def item_vectors(self, inputs: TowerInputs) -> Tensor:
        return self.model.item_vectors(inputs)

    def loss(self, entries: np.ndarray | Tensor) -> Tensor:
        """The configured loss of a batch, plus the teacher's term when there is one."""
        entries = torch.as_tensor(entries, dtype=torch.int64).to(self.inputs.device)
        users = self.entry_users[entries]
        loss = self.task_loss(entries, users)
        if self.teacher is None or self.settings.teacher_weight == 0:
            return loss
        return loss + self.settings.teacher_weight * self.teacher_loss(users)

    def teacher_loss(self, users: Tensor) -> Tensor:
        """Distillation over the whole catalogue for each distinct user of a batch.

        The user vector is the one serving computes (latest history), since the teacher
        speaks of the user's whole training set.
        """
        assert self.teacher is not None
        distinct = torch.unique(users)
        probs, known = self.teacher.targets(distinct.cpu().numpy())
        device = self.inputs.device
        user_vecs = self.user_vectors(self.inputs.users(distinct))
        item_vecs = self.item_vectors(self.inputs.items(torch.arange(self.inputs.data.n_items)))
        return losses.distillation(
            user_vecs,
            item_vecs,
            probs.to(device),
            self.model.config.temperature,
            known.to(device),
        )

    def _sample(self, n: int) -> tuple[Tensor, Tensor]:
        rows, log_q = self.sampler.sample(n)
        return rows.to(self.inputs.device), log_q.to(self.inputs.device)

    def task_loss(self, entries: Tensor, users: Tensor) -> Tensor:
        s, model, batch = self.settings, self.model, len(entries)
        pos_rows = self.entry_items[entries]
        weights = None if self.weights is None else self.weights[entries]
        user_vecs = self.user_vectors(self.inputs.users(users, entries))
        temperature = model.config.temperature
        if s.loss != "listwise":
            neg_rows, _ = self._sample(batch * s.num_negatives)
            item_vecs = self.item_vectors(self.inputs.items(torch.cat([pos_rows, neg_rows])))
            pos_vecs = item_vecs[:batch]
            neg_vecs = item_vecs[batch:].view(batch, s.num_negatives, -1)
            if s.loss == "pointwise":
                return losses.pointwise_bce(user_vecs, pos_vecs, neg_vecs, temperature, weights)
            if s.loss == "pairwise-hinge":
                return losses.pairwise_hinge(user_vecs, pos_vecs, neg_vecs, s.margin, weights)
            return losses.pairwise_logistic(user_vecs, pos_vecs, neg_vecs, temperature, weights)
        kwargs: dict[str, Tensor | None] = {}
        columns = pos_rows
        if s.log_q:
            kwargs["pos_log_q"] = self.pos_log_q[pos_rows]
        if s.sampled_negatives:
            neg_rows, neg_log_q = self._sample(s.sampled_negatives)
            columns = torch.cat([pos_rows, neg_rows])
            kwargs["neg_item_rows"] = neg_rows
            kwargs["neg_log_q"] = s.log_q_weight * neg_log_q if s.log_q else None
        # One item-tower pass for the positives and the shared negatives.
        item_vecs = self.item_vectors(self.inputs.items(columns))
        pos_vecs = item_vecs[:batch]
        if s.sampled_negatives:
            kwargs["neg_vectors"] = item_vecs[batch:]
        if s.hard_negatives and self.item_cache is not None:
            positives = [self.known.of(int(u)).cpu() for u in users]
            hard = hard_negatives(
                user_vecs.detach().cpu(),
                self.item_cache,
                positives,
                s.hard_negatives,
                s.hard_skip_top,
                self.generator,
            ).to(self.inputs.device)
            hard_vecs = self.item_vectors(self.inputs.items(hard.reshape(-1)))
            kwargs["hard_vectors"] = hard_vecs.view(batch, s.hard_negatives, -1)
            kwargs["hard_item_rows"] = hard
        mask = None
        remove_hits = s.remove_accidental_hits
        if s.mask_known_positives:
            mask = self.known.mask(users, columns, user_vecs.dtype)
            if "hard_vectors" in kwargs:  # mined hard negatives already skip known positives
                extra = mask.new_zeros(batch, s.hard_negatives)
                mask = torch.cat([mask, extra], 1)
            # An accidental hit (a column holding the row's positive) is a known positive too:
            # the mask already removes it.
            remove_hits = False
        return losses.sampled_softmax(
            user_vecs,
            pos_vecs,
            pos_rows,
            temperature,
            remove_accidental_hits=remove_hits,
            negative_mask=mask,
            weights=weights,
            **kwargs,  # type: ignore[arg-type]
        )
