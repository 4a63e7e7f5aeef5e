"""Training throughput: examples per second of each loss on ml-100k and a 1M-item catalogue.

    .venv/bin/python bench/train_throughput.py [--datasets ml-100k,synth-1m] [--steps 10]
        [--repeats 3] [--work DIR]

Each dataset is split leave-last-out and encoded with configs/ml-100k.toml's features and model
(hidden [256], dim 64). ``synth-1m`` is a ``write_synthetic`` dataset of 200k users, 1M items
and 2M interactions, written once into ``--work``. A row times ``--steps`` optimiser steps of
``TwoTowerTrainTask`` (loss, backward, Adam step: ``train_model``'s inner loop) after two
warm-up steps, ``--repeats`` times; it prints the median examples per second and milliseconds
per step. ``ratio`` is the row's examples per second over the baseline's, the first row of its
dataset: listwise, batch 512, one CPU thread, measured in the same process. CUDA rows run when
``torch.cuda.is_available()``. ``listwise+teacher`` (ml-100k only) adds the distillation
term with ``[train.random-811]``'s knobs; every other row times the loss alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models.config import TrainConfig, load_config
from models.data import load_dataset, make_split
from models.encoding import Histories, encode_dataset, fit_specs
from models.train import Inputs, TwoTowerTrainTask
from models.two_tower import TwoTower

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ("cpu", 1, "listwise", 512)
# (device, threads, loss, batch); threads only matter on the CPU.
# "listwise+teacher" adds the EASE teacher's term (the knobs of configs/ml-100k.toml's
# [train.random-811]); the other rows time the loss alone. EASE needs a small catalogue, so
# synth-1m has no such row.
CPU_RUNS = [
    BASELINE,
    ("cpu", 1, "listwise+teacher", 512),
    ("cpu", 1, "pointwise", 512),
    ("cpu", 1, "pairwise-hinge", 512),
    ("cpu", 1, "pairwise-logistic", 512),
    ("cpu", 1, "listwise", 2048),
    ("cpu", 2, "listwise", 512),
]
CUDA_RUNS = [
    ("cuda", 1, "listwise", 512),
    ("cuda", 1, "pointwise", 512),
    ("cuda", 1, "pairwise-hinge", 512),
    ("cuda", 1, "pairwise-logistic", 512),
    ("cuda", 1, "listwise", 2048),
    ("cuda", 1, "listwise", 8192),
]


def prepare(name: str, work: Path) -> tuple[TrainConfig, Inputs, tuple]:
    """The dataset's leave-last-out training inputs (CPU) and its fitted feature specs."""
    config = load_config(ROOT / "configs" / "ml-100k.toml")
    if name == "ml-100k":
        data_dir = ROOT / "data" / "ml-100k"
        if not (data_dir / "ml-100k.inter").exists():
            raise SystemExit("no data/ml-100k: run `.venv/bin/recall data fetch --dir data`")
    else:
        from models.synth import write_synthetic

        data_dir = work / name
        if not (data_dir / f"{name}.inter").exists():
            write_synthetic(data_dir, 200_000, 1_000_000, 2_000_000, seed=0, progress=False)
    dataset = load_dataset(data_dir)
    split = make_split(dataset.interactions, "leave-last-out", 0)
    specs = fit_specs(config, dataset, split)
    data = encode_dataset(dataset, *specs)
    history = [(f.name, f.max_len) for f in specs[0].of_kind("history")]
    return config, Inputs(data, Histories.build(data, split.train), history), specs


def measure(
    config: TrainConfig, inputs: Inputs, specs: tuple, run: tuple, steps: int, repeats: int
) -> list[float]:
    """Seconds per ``steps`` optimiser steps, once per repeat, after two warm-up steps."""
    device, threads, name, batch = run
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    loss, _, teacher = name.partition("+")
    # The teacher's knobs as random-811 sets them; the inputs stay leave-last-out's.
    base = config.for_split("random-811").train if teacher else config.train
    settings = dataclasses.replace(base, loss=loss, batch_size=batch)
    inputs = dataclasses.replace(inputs, device=device)
    model = TwoTower(config.model, *specs).to(device).train()
    task = TwoTowerTrainTask(model, inputs, settings, seed=0)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    order = np.random.default_rng(0).permutation(len(inputs.histories.items))
    batches = (order[(i * batch) % (len(order) - batch) :][:batch] for i in range(10**9))

    def step() -> None:
        value = task.loss(next(batches))
        optimiser.zero_grad(set_to_none=True)
        value.backward()
        optimiser.step()
        value.item()  # as train_model does; also waits for the GPU

    for _ in range(2):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="ml-100k,synth-1m")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, help="where synth-1m is written (default: a temp dir)")
    args = parser.parse_args()
    runs = CPU_RUNS + (CUDA_RUNS if torch.cuda.is_available() else [])
    head = (
        f"{'dataset':<9} {'device':<6} {'threads':>7} {'loss':<18} {'batch':>6} "
        f"{'examples/s':>11} {'ms/step':>9} {'ratio':>6}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        print(head)
        print("-" * len(head))
        for name in args.datasets.split(","):
            config, inputs, specs = prepare(name, work)
            data, params = (
                inputs.data,
                sum(p.numel() for p in TwoTower(config.model, *specs).parameters()),
            )
            print(
                f"# {name}: {data.n_users:,} users, {data.n_items:,} items, "
                f"{len(inputs.histories.items):,} training examples; hidden {config.model.hidden}, "
                f"dim {config.model.dim}, {params / 1e6:.1f}M parameters"
            )
            baseline = None
            for run in runs:
                if "+teacher" in run[2] and data.n_items > 20_000:
                    continue
                seconds = statistics.median(
                    measure(config, inputs, specs, run, args.steps, args.repeats)
                )
                rate = args.steps * run[3] / seconds
                baseline = baseline or rate
                device, threads, loss, batch = run
                print(
                    f"{name:<9} {device:<6} {threads:>7} {loss:<18} {batch:>6} "
                    f"{rate:>11,.0f} {1000 * seconds / args.steps:>9.1f} {rate / baseline:>6.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
