"""Training on N processes under torchrun: id tables sharded by TorchRec, the rest data-parallel.

``torchrun --nproc_per_node=N .venv/bin/recall train ...`` runs ``run_training`` on every rank;
``train_model`` hands the epochs to :func:`train_sharded` whenever torchrun's environment is set
(``nproc_per_node=1`` included, so one and N processes run the same code):

- the id tables (features of kind ``id`` and ``history``: user id, history, item id) move into
  one TorchRec ``EmbeddingBagCollection`` per tower (mean pooling), which
  ``DistributedModelParallel`` shards by ``[train] sharding``: ``table-wise`` (each table on one
  rank, round robin) or ``column-wise`` (every table whose dim divides by the world size split
  by columns over the ranks, the others table-wise; row-wise needs GPUs and NCCL). The other
  tables and the MLPs are replicated; their gradients are all-reduced (DDP over gloo on the
  CPU, NCCL on GPUs).
- Sharded tables below ``sparse_rows`` rows use TorchRec's dense kernel and train with Adam like
  every other parameter; bigger ones use FBGEMM's fused kernel (lookup, backward and update in
  one), whose CPU build offers row-wise Adagrad and SGD but no Adam: row-wise Adagrad at
  ``[train] sharded_lr``.
- Every rank shuffles with the same seed and trains on its share (``rank::world``) of each batch,
  so the global batch is ``batch_size``; negatives and dropout draw from per-rank streams.
- After each epoch the shards are gathered into an ordinary ``TwoTower`` on rank 0, which
  validates and broadcasts the decision; the returned model (rank 0) has ordinary unsharded
  tables, so its artifact loads, indexes and serves in one process. No weight average here.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from models.config import TrainSettings
from models.inputs import Bag, Inputs, Pooled, TowerInputs
from models.task import TwoTowerTrainTask
from models.towers import Tower
from models.two_tower import TwoTower

log = logging.getLogger(__name__)
SHARDED_KINDS = ("id", "history")


def active() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets its env)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def world(device: torch.device) -> tuple[int, int]:
    """(rank, world size), joining the process group on first use."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def is_leader() -> bool:
    return not (active() and dist.is_initialized()) or dist.get_rank() == 0


class ShardedTables(nn.Module):
    """One tower's id tables as a TorchRec EmbeddingBagCollection, fed from tower inputs."""

    def __init__(self, tower: Tower, names: list[str]):
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType

        super().__init__()
        self.names = names
        tables = []
        for name in names:
            table = tower.embeddings[name]
            assert isinstance(table, nn.Embedding)
            tables.append(
                EmbeddingBagConfig(
                    name=name,
                    embedding_dim=table.embedding_dim,
                    num_embeddings=table.num_embeddings,
                    feature_names=[name],
                    pooling=PoolingType.MEAN,
                )
            )
        self.ebc: Any = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))

    def forward(self, inputs: TowerInputs) -> dict[str, Tensor]:
        from torchrec import KeyedJaggedTensor

        values, lengths = [], []
        for name in self.names:
            value = inputs[name]
            if isinstance(value, Bag):
                values.append(value.tokens)
                lengths.append(value.offsets.diff())
            else:
                assert isinstance(value, Tensor)
                values.append(value)
                lengths.append(torch.ones_like(value))
        features = KeyedJaggedTensor.from_lengths_sync(
            keys=self.names, values=torch.cat(values), lengths=torch.cat(lengths)
        )
        return self.ebc(features).to_dict()


class ShardedTwoTower(nn.Module):
    """A TwoTower whose id tables live in sharded collections; ``forward`` is a batch's loss."""

    def __init__(self, model: TwoTower):
        super().__init__()
        self.model = model
        self.config, self.specs = model.config, (model.user_tower.spec, model.item_tower.spec)
        self.start: dict[str, Tensor] = {}  # initial weights, by the collections' state keys
        self.tables = nn.ModuleDict()
        for side, tower in (("user", model.user_tower), ("item", model.item_tower)):
            names = [f.name for f in tower.spec.features if f.kind in SHARDED_KINDS]
            self.tables[side] = ShardedTables(tower, names)
            for name in names:
                key = f"tables.{side}.ebc.embedding_bags.{name}.weight"
                table = tower.embeddings[name]
                assert isinstance(table, nn.Embedding)
                self.start[key] = table.weight.detach().clone()
                del tower.embeddings[name]  # its weights are the collection's now
        self.task: TwoTowerTrainTask | None = None

    def side(self, name: str) -> ShardedTables:
        tables = self.tables[name]
        assert isinstance(tables, ShardedTables)
        return tables

    def embed(self, side: str, inputs: TowerInputs) -> TowerInputs:
        pooled = self.side(side)(inputs)
        return {**inputs, **{name: Pooled(vectors) for name, vectors in pooled.items()}}

    def forward(self, entries: Tensor) -> Tensor:
        assert self.task is not None
        return self.task.loss(entries)

    def table_key(self, key: str) -> str:
        """A collection's state key -> the same table's key in an ordinary TwoTower."""
        _, side, _, _, name, _ = key.split(".")
        return f"{side}_tower.embeddings.{name}.weight"


class ShardedTrainTask(TwoTowerTrainTask):
    """The train task with the towers' id features embedded by the sharded collections."""

    def __init__(self, module: ShardedTwoTower, inputs: Inputs, settings: TrainSettings, seed: int):
        super().__init__(module.model, inputs, settings, seed)
        self.module = module

    def user_vectors(self, inputs: TowerInputs) -> Tensor:
        return self.model.user_vectors(self.module.embed("user", inputs))

    def item_vectors(self, inputs: TowerInputs) -> Tensor:
        return self.model.item_vectors(self.module.embed("item", inputs))


def shard(module: ShardedTwoTower, settings: TrainSettings, device: torch.device) -> nn.Module:
    """``module`` under DistributedModelParallel with the ``settings.sharding`` plan."""
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.model_parallel import DefaultDataParallelWrapper
    from torchrec.distributed.sharding_plan import (
        column_wise,
        construct_module_sharding_plan,
        table_wise,
    )
    from torchrec.distributed.types import ShardingEnv, ShardingPlan
    from torchrec.optim import RowWiseAdagrad
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    size = dist.get_world_size()
    plans, placed = {}, 0
    for side in module.tables:
        tables, per_table = module.side(side), {}
        for config in tables.ebc.embedding_bag_configs():
            fused = config.num_embeddings >= settings.sparse_rows
            if fused:
                weight = tables.ebc.embedding_bags[config.name].weight
                apply_optimizer_in_backward(RowWiseAdagrad, [weight], {"lr": settings.sharded_lr})
            kernel = "fused" if fused else "dense"
            even = config.embedding_dim % size == 0
            if settings.sharding == "column-wise" and not even and dist.get_rank() == 0:
                log.info("table %s: dim %d does not split over %d ranks; placed table-wise",
                         config.name, config.embedding_dim, size)  # fmt: skip
            if settings.sharding == "column-wise" and even:
                per_table[config.name] = column_wise(ranks=list(range(size)), compute_kernel=kernel)
            else:
                per_table[config.name] = table_wise(rank=placed % size, compute_kernel=kernel)
                placed += 1
        plans[f"tables.{side}.ebc"] = construct_module_sharding_plan(
            tables.ebc, per_table, world_size=size, local_size=size, device_type=device.type
        )
    with warnings.catch_warnings():  # TorchRec's own deprecation notices
        warnings.simplefilter("ignore")
        sharded = DistributedModelParallel(
            module,
            env=ShardingEnv.from_process_group(dist.group.WORLD),
            device=device,
            plan=ShardingPlan(plans),
            data_parallel_wrapper=DefaultDataParallelWrapper(
                static_graph=False, find_unused_parameters=True
            ),
        )
    state = sharded.state_dict()
    for key, start in module.start.items():  # every rank starts from the same weights
        for part in state[key].local_shards():
            (row, col), (rows, cols) = part.metadata.shard_offsets, part.metadata.shard_sizes
            part.tensor.detach().copy_(start[row : row + rows, col : col + cols])
    return sharded


def gather(sharded: nn.Module, module: ShardedTwoTower, device: torch.device) -> TwoTower | None:
    """The whole model with ordinary tables on rank 0 (None elsewhere); every rank calls it."""
    state, leader = sharded.state_dict(), dist.get_rank() == 0
    full: dict[str, Tensor] = {}
    for key, start in module.start.items():
        out = torch.empty_like(start) if leader else None
        state[key].gather(dst=0, out=out)
        if out is not None:
            full[module.table_key(key)] = out
    if not leader:
        return None
    model = TwoTower(module.config, *module.specs)
    dense = {
        k.removeprefix("model."): v.detach().cpu()
        for k, v in state.items()
        if k.startswith("model.")
    }
    model.load_state_dict({**dense, **{k: v.cpu() for k, v in full.items()}}, strict=True)
    return model.to(device)


class ShardedTraining:
    """One rank's part of a sharded run: the sharded model, its optimiser, one step at a time.

    ``train_sharded`` and ``bench/train_throughput.py`` both step through this class.
    """

    def __init__(self, model: TwoTower, inputs: Inputs, settings: TrainSettings):
        self.device, self.settings = inputs.device, settings
        self.rank, self.size = world(self.device)
        torch.manual_seed(settings.seed)
        model.reseed(settings.seed + 1000 * self.rank)  # per-rank dropout streams
        self.module = ShardedTwoTower(model.to(self.device))
        seed = settings.seed + 1000 * self.rank  # per-rank negatives
        self.module.task = ShardedTrainTask(self.module, inputs, settings, seed)
        self.sharded = shard(self.module, settings, self.device)
        from torchrec.optim.optimizers import in_backward_optimizer_filter

        dense = [p for _, p in in_backward_optimizer_filter(self.sharded.named_parameters())]
        self.optimiser = torch.optim.Adam(dense, lr=settings.lr, weight_decay=settings.weight_decay)

    def step(self, batch: Tensor) -> Tensor:
        """One optimiser step on this rank's share (``rank::size``) of a global batch."""
        loss = self.sharded(batch[self.rank :: self.size])
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()  # the fused tables update themselves here
        self.optimiser.step()
        return loss.detach()

    def gather(self) -> TwoTower | None:
        return gather(self.sharded, self.module, self.device)


def train_sharded(
    model: TwoTower,
    inputs: Inputs,
    settings: TrainSettings,
    validate: Any,
    progress: bool,
    result: Any,
) -> Any:
    """``train_model``'s contract on N processes; ``result.model`` is rank 0's whole model."""
    run = ShardedTraining(model, inputs, settings)
    rank, size = run.rank, run.size
    if settings.ema_decay > 0 and rank == 0:
        log.info("sharded training keeps the live weights: no weight average under torchrun")
    rng = np.random.default_rng(settings.seed)
    n, batch = len(inputs.histories.items), settings.batch_size
    # Every rank takes every step (the collectives pair them up): a last partial batch only when
    # it leaves each rank an entry.
    steps = n // batch + (n % batch >= size)
    best_state, stale, whole = None, 0, None
    desc = f"train {settings.loss} x{size}"
    bar = tqdm(range(1, settings.epochs + 1), desc=desc, disable=not progress or rank != 0)
    for epoch in bar:
        run.sharded.train()
        order = torch.from_numpy(rng.permutation(n))
        total = torch.zeros(2)
        for step in range(steps):
            loss = run.step(order[step * batch : (step + 1) * batch])
            total += torch.tensor([float(loss), 1.0])
        dist.all_reduce(total)
        row: dict[str, Any] = {"epoch": float(epoch), "loss": float(total[0] / total[1])}
        result.history.append(row)
        whole = run.gather()
        if validate is None:
            result.best_epoch = epoch
            continue
        decision: list[Any] = [None]
        if whole is not None:
            metrics = validate(whole)
            decision = [metrics]
        dist.broadcast_object_list(decision, src=0)
        metrics = decision[0]
        score = metrics[settings.metric]
        row.update({f"valid_{k}": v for k, v in metrics.items()})
        if score > result.best_metric:
            result.best_metric, result.best_epoch, stale = score, epoch, 0
            if whole is not None:
                best_state = {k: v.detach().clone() for k, v in whole.state_dict().items()}
        else:
            stale += 1
        if rank == 0:
            log.info("epoch %d loss %.4f valid %s %.4f", epoch, row["loss"], settings.metric, score)
        if stale >= settings.patience:
            break
    if whole is not None and best_state is not None:
        whole.load_state_dict(best_state)
    if whole is not None:
        whole.eval()
    result.model = whole if whole is not None else model
    dist.barrier()
    return result
