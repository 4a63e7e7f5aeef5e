"""Training throughput: examples per second of the loop training runs, against the old loop.

    .venv/bin/python bench/train_throughput.py [--datasets ml-100k,synth-1m] [--steps 20]
        [--repeats 3] [--baseline-commit 2fb70dc] [--skip-baseline]

Each row times ``--steps`` optimiser steps exactly as ``models.train.train_model`` runs them
(``TwoTowerTrainTask.loss`` then ``Stepper.step``: backward, fused Adam, RowAdam for big
tables, the weight average when the config has one) after three warm-up steps, ``--repeats``
times, and prints the median. Data: leave-last-out training inputs of ``ml-100k``
(configs/ml-100k.toml) and ``synth-1m`` (configs/synth.toml; ``recall data synth --users
200000 --items 1000000 --interactions 5000000 --out data/synth-1m`` first).

``vs old``: the row's examples/s over the previous implementation's real loop (its task, its
optimisers, its weight average: ``train_model``'s inner loop at ``--baseline-commit``), run from
a temporary git worktree of that commit in a subprocess of this run, with the same config,
batch and thread count. ``floor``: the step's matrix products alone (both towers' linear layers
and the logits, forward and backward), the limit the rest of the step sits above.
``2 procs``: ``torchrun --nproc_per_node=2`` of the same loop with TorchRec-sharded id tables
(``models.distributed``), examples/s summed over the ranks. CUDA rows run when a GPU is
visible.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.config import TrainConfig, load_config  # noqa: E402
from models.data import load_dataset, make_split  # noqa: E402
from models.encoding import Histories, encode_dataset, fit_specs  # noqa: E402
from models.inputs import Inputs  # noqa: E402
from models.task import TwoTowerTrainTask  # noqa: E402
from models.train import Stepper  # noqa: E402
from models.two_tower import TwoTower  # noqa: E402

DATASETS = {"ml-100k": "configs/ml-100k.toml", "synth-1m": "configs/synth.toml"}
# (device, threads, loss, batch); "listwise+teacher" adds the EASE teacher (random-811's knobs).
CPU_RUNS = {
    "ml-100k": [
        ("cpu", 1, "listwise", 512),
        ("cpu", 1, "listwise+teacher", 512),
        ("cpu", 1, "pointwise", 512),
        ("cpu", 1, "pairwise-logistic", 512),
        ("cpu", 1, "listwise", 2048),
        ("cpu", 2, "listwise", 512),
    ],
    "synth-1m": [
        ("cpu", 1, "listwise", 512),
        ("cpu", 1, "listwise", 1024),
        ("cpu", 1, "listwise", 2048),
        ("cpu", 2, "listwise", 1024),
    ],
}
CUDA_RUNS = [
    ("cuda", 0, "listwise", 512),
    ("cuda", 0, "listwise", 2048),
    ("cuda", 0, "listwise", 8192),
]
OLD_ROWS = {("cpu", 1, "listwise", 512), ("cpu", 1, "listwise", 1024)}  # timed on the old loop too

OLD_LOOP = r"""
import json, statistics, sys, time
from pathlib import Path
import numpy as np, torch
from models.config import TrainConfig, TrainSettings
from models.data import load_dataset, make_split
from models.encoding import Histories, encode_dataset, fit_specs
from models.train import Inputs, TwoTowerTrainTask, WeightAverage, make_optimisers
from models.two_tower import TwoTower

job = json.loads(sys.argv[1])
torch.set_num_threads(job["threads"])
raw = job["config"]
raw["train"] = {k: v for k, v in raw["train"].items() if k in TrainSettings.__dataclass_fields__}
config = TrainConfig.from_dict(raw)
dataset = load_dataset(Path(job["data_dir"]), config.dataset)
split = make_split(dataset.interactions, "leave-last-out", 0)
specs = fit_specs(config, dataset, split)
data = encode_dataset(dataset, *specs)
history = [(f.name, f.max_len) for f in specs[0].of_kind("history")]
inputs = Inputs(data, Histories.build(data, split.train), history)
out = {}
for batch in job["batches"]:
    torch.manual_seed(0)
    settings = config.train.__class__(**{**config.train.__dict__, "batch_size": batch})
    model = TwoTower(config.model, *specs).train()
    task = TwoTowerTrainTask(model, inputs, settings, seed=0)
    optimisers = make_optimisers(model, settings)
    ema = WeightAverage(model, settings.ema_decay) if settings.ema_decay > 0 else None
    order = np.random.default_rng(0).permutation(len(inputs.histories.items))
    state = {"i": 0}
    def step():
        i = state["i"] = state["i"] + 1
        start = (i * batch) % (len(order) - batch)
        loss = task.loss(order[start : start + batch])
        for o in optimisers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in optimisers:
            o.step()
        if ema is not None:
            ema.update(model)
        loss.item()
    for _ in range(3):
        step()
    times = []
    for _ in range(job["repeats"]):
        t = time.perf_counter()
        for _ in range(job["steps"]):
            step()
        times.append(time.perf_counter() - t)
    out[str(batch)] = statistics.median(times) / job["steps"]
print("RESULT " + json.dumps(out))
"""


def prepare(name: str) -> tuple[TrainConfig, Path, Inputs, tuple]:
    """The dataset's config, folder and leave-last-out training inputs."""
    config = load_config(ROOT / DATASETS[name])
    data_dir = ROOT / config.data_dir
    if not (data_dir / f"{config.dataset}.inter").exists():
        raise SystemExit(f"no {data_dir}: see the module docstring for how to make it")
    dataset = load_dataset(data_dir, config.dataset)
    split = make_split(dataset.interactions, "leave-last-out", 0)
    specs = fit_specs(config, dataset, split)
    data = encode_dataset(dataset, *specs)
    inputs = Inputs(data, Histories.build(data, split.train), *specs)
    return config, data_dir, inputs, specs


def settings_for(config: TrainConfig, loss: str, batch: int) -> object:
    loss, _, teacher = loss.partition("+")
    base = config.for_split("random-811").train if teacher else config.train
    return dataclasses.replace(base, loss=loss, batch_size=batch)


def measure(
    config: TrainConfig, inputs: Inputs, specs: tuple, run: tuple, steps: int, repeats: int
) -> float:
    """Median seconds per training step of ``run`` (device, threads, loss, batch)."""
    device, threads, loss, batch = run
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    settings = settings_for(config, loss, batch)
    on_device = Inputs(inputs.data, inputs.histories, *specs, device) if device != "cpu" else inputs
    model = TwoTower(config.model, *specs).to(device).train()
    task = TwoTowerTrainTask(model, on_device, settings, seed=0)  # type: ignore[arg-type]
    stepper = Stepper(model, settings)  # type: ignore[arg-type]
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(inputs.histories.items)))
    position = [0]

    def step() -> None:
        position[0] += 1
        start = (position[0] * batch) % (len(order) - batch)
        stepper.step(task.loss(order[start : start + batch])).item()  # .item(): waits for a GPU

    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - started) / steps)
    return statistics.median(times)


def floor(config: TrainConfig, inputs: Inputs, specs: tuple, batch: int, repeats: int) -> float:
    """Seconds per step of the step's matrix products alone (forward and backward)."""
    torch.set_num_threads(1)
    model = TwoTower(config.model, *specs)
    shapes = []
    for tower in (model.user_tower, model.item_tower):
        shapes += [
            tuple(layer.weight.shape) for layer in tower.mlp if isinstance(layer, torch.nn.Linear)
        ]
    weights = [torch.randn(out, inp, requires_grad=True) for out, inp in shapes]
    inputs_ = [torch.randn(batch, inp) for _, inp in shapes]
    dim = config.model.dim
    users, items = (
        torch.randn(batch, dim, requires_grad=True),
        torch.randn(batch, dim, requires_grad=True),
    )

    def once() -> None:
        outs = [x @ w.T for x, w in zip(inputs_, weights, strict=True)]
        logits = users @ items.T
        (sum(o.sum() for o in outs) + logits.sum()).backward()

    for _ in range(3):
        once()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(10):
            once()
        times.append((time.perf_counter() - started) / 10)
    return statistics.median(times)


def old_loop(
    commit: str, config: TrainConfig, data_dir: Path, batches: list[int], steps: int, repeats: int
) -> dict[int, float]:
    """Seconds per step of the old implementation's loop, from a worktree of ``commit``."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit],
                       check=True, capture_output=True)  # fmt: skip
        try:
            job = {"config": config.to_dict(), "data_dir": str(data_dir), "threads": 1,
                   "batches": batches, "steps": steps, "repeats": repeats}  # fmt: skip
            job["config"]["dataset"] = {"name": config.dataset, "dir": str(data_dir)}
            env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
            done = subprocess.run([sys.executable, "-c", OLD_LOOP, json.dumps(job)], cwd=tree,
                                  env=env, check=True, capture_output=True, text=True)  # fmt: skip
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           check=False, capture_output=True)  # fmt: skip
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return {int(k): v for k, v in json.loads(line.removeprefix("RESULT ")).items()}


def sharded_worker(name: str, batch: int, steps: int, repeats: int) -> None:
    """Under torchrun: time ``ShardedTraining.step`` on global batches; rank 0 prints it."""
    import torch.distributed as dist

    from models.distributed import ShardedTraining

    torch.set_num_threads(1)
    config, _, inputs, specs = prepare(name)
    settings = dataclasses.replace(config.train, batch_size=batch)
    run = ShardedTraining(TwoTower(config.model, *specs), inputs, settings)
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(inputs.histories.items)))
    position = [0]

    def step() -> None:
        position[0] += 1
        start = (position[0] * batch) % (len(order) - batch)
        run.step(order[start : start + batch])

    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        dist.barrier()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - started) / steps)
    if run.rank == 0:
        print("RESULT " + json.dumps({"seconds": statistics.median(times), "world": run.size}))
    dist.destroy_process_group()


def sharded(name: str, processes: int, batch: int, steps: int, repeats: int) -> float:
    """Seconds per global step of ``processes`` ranks under torchrun (one thread each)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", __file__, "--sharded-worker", name,
               "--batch", str(batch), "--steps", str(steps), "--repeats", str(repeats)]  # fmt: skip
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True, cwd=ROOT)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return float(json.loads(line.removeprefix("RESULT "))["seconds"])


def row(name: str, run: tuple, seconds: float, vs_old: str, vs_floor: str) -> str:
    device, threads, loss, batch = run
    return (f"| {name} | {device} | {threads or '-'} | {loss} | {batch} | {batch / seconds:,.0f} | "
            f"{1000 * seconds:.1f} | {vs_old} | {vs_floor} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="ml-100k,synth-1m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-commit", default="2fb70dc")
    parser.add_argument("--skip-baseline", action="store_true", help="no old-loop rows")
    parser.add_argument("--sharded-worker", help=argparse.SUPPRESS)  # a torchrun rank
    parser.add_argument("--batch", type=int, default=512, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sharded_worker:
        sharded_worker(args.sharded_worker, args.batch, args.steps, args.repeats)
        return
    print("| dataset | device | threads | loop | batch | examples/s | ms/step | vs old | x floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.datasets.split(","):
        config, data_dir, inputs, specs = prepare(name)
        params = sum(p.numel() for p in TwoTower(config.model, *specs).parameters())
        print(f"| {name}: {inputs.data.n_users:,} users, {inputs.data.n_items:,} items, "
              f"{len(inputs.histories.items):,} examples, {params / 1e6:.1f}M parameters "
              "| | | | | | | | |", flush=True)  # fmt: skip
        runs = CPU_RUNS[name] + (CUDA_RUNS if torch.cuda.is_available() else [])
        old_batches = sorted({r[3] for r in runs if r in OLD_ROWS})
        old = (
            {}
            if args.skip_baseline
            else old_loop(
                args.baseline_commit, config, data_dir, old_batches, args.steps, args.repeats
            )
        )
        for batch, seconds in old.items():
            run = ("cpu", 1, f"old loop ({args.baseline_commit}) listwise", batch)
            print(row(name, run, seconds, "1.00", "-"), flush=True)
        floors = {}
        for run in runs:
            if "+teacher" in run[2] and inputs.data.n_items > 20_000:
                continue
            batch = run[3]
            if run[0] == "cpu" and batch not in floors:
                floors[batch] = floor(config, inputs, specs, batch, args.repeats)
            seconds = measure(config, inputs, specs, run, args.steps, args.repeats)
            vs_old = f"{old[batch] / seconds:.2f}" if run in OLD_ROWS and batch in old else "-"
            vs_floor = f"{seconds / floors[batch]:.2f}" if run[0] == "cpu" else "-"
            print(row(name, run, seconds, vs_old, vs_floor), flush=True)
        one = None
        for processes in (1, 2):  # torchrun, TorchRec-sharded id tables, one thread a rank
            seconds = sharded(name, processes, 512, args.steps, args.repeats)
            one = one or seconds
            run = ("cpu", 1, f"torchrun x{processes} (sharded), vs x1", 512)
            print(row(name, run, seconds, f"{one / seconds:.2f}", "-"), flush=True)
        for batch, seconds in sorted(floors.items()):
            run = ("cpu", 1, "floor: its matrix products alone", batch)
            print(row(name, run, seconds, "-", "1.00"), flush=True)


if __name__ == "__main__":
    main()
