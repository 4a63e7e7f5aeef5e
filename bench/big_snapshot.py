"""The 1M-item snapshots the load benchmark serves, built once and cached under ``--work``.

    .venv/bin/python bench/big_snapshot.py [--work bench/results] [--items 1000000]

Steps (each skipped when its output exists): ``models.synth.write_synthetic`` (``users`` users,
``items`` items, 5 interactions per user), plus one early interaction for every item that got
none (so every item has its own id embedding: items outside the vocabulary would share one,
and their vectors would tie) -> one epoch of listwise training with configs/ml-100k.toml's
features and a dim-64 model -> ``index_builder`` builds with recall@100 >= 0.95 against exact
search: the automatic choice (IVF-Flat at 1M items) under ``<work>/snapshots`` and an HNSW32
one under ``<work>/snapshots-hnsw`` (the naive baseline's). The HNSW graph is built with
efConstruction 200: at the default 64, this catalogue's many near-duplicate tail items (one
interaction each) leave HNSW short of recall@100 0.95 at any efSearch (measured: 0.90).

Training skips run_training's full-ranking evaluation and baselines (EASE cannot invert a
1M x 1M matrix, and ranking a million items for every user would dominate the run), uses
small id embeddings (16) and no known-positive masking (its cost grows with batch^2): the load
benchmark needs a realistic user tower and distinct item vectors, not offline quality.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASET = "synth"
log = logging.getLogger("bench.big_snapshot")


def train_artifact(data_dir: Path, out: Path) -> Path:
    """One epoch on ``data_dir`` (leave-last-out) saved as an artifact at ``out``."""
    from models.artifact import Artifact, save_artifact
    from models.config import TrainConfig
    from models.data import load_dataset, make_split
    from models.encoding import Histories, encode_dataset, fit_specs
    from models.experiment import data_info
    from models.train import Inputs, train_model
    from models.two_tower import TwoTower

    raw = tomllib.loads((ROOT / "configs" / "ml-100k.toml").read_text())
    raw["dataset"] = {"name": DATASET, "dir": str(data_dir)}
    raw["model"] = {**raw["model"], "dim": 64, "embedding_max": 16}
    raw["train"] = {**raw["train"], "epochs": 1, "batch_size": 4096, "patience": 1,
                    "mask_known_positives": False}  # fmt: skip
    config = TrainConfig.from_dict(raw)
    dataset = load_dataset(data_dir, config.dataset)
    split = make_split(dataset.interactions, "leave-last-out", config.train.seed)
    user_spec, item_spec = fit_specs(config, dataset, split)
    data = encode_dataset(dataset, user_spec, item_spec)
    model = TwoTower(config.model, user_spec, item_spec)
    history = [(f.name, f.max_len) for f in user_spec.of_kind("history")]
    inputs = Inputs(data, Histories.build(data, split.train), history)
    result = train_model(
        model, inputs, config.train, lambda m: {config.train.metric: 0.0}, progress=True
    )
    info = data_info(config, dataset.fingerprint, split, data_dir)
    metrics = {"protocol": "leave-last-out", "note": "bench model: not evaluated offline"}
    artifact = Artifact(model, config, user_spec, item_spec, info, metrics, result.history)
    save_artifact(artifact, out)
    return out


def cover_items(data_dir: Path, users: int, items: int, seed: int = 0) -> None:
    """Give every item without an interaction one, by a random user, before any other (so
    leave-last-out keeps it in training)."""
    import numpy as np

    path = data_dir / f"{DATASET}.inter"
    seen = np.zeros(items + 1, dtype=bool)
    with path.open() as lines:
        next(lines)
        for line in lines:
            seen[int(line.split("\t", 2)[1])] = True
    missing = np.flatnonzero(~seen[1:]) + 1
    rng = np.random.default_rng(seed)
    who = rng.integers(1, users + 1, len(missing))
    first = 800_000_000  # before the synthetic time range, distinct per row
    with path.open("a") as out:
        out.writelines(
            f"{u}\t{i}\t4\t{first + n}\n"
            for n, (u, i) in enumerate(zip(who.tolist(), missing.tolist(), strict=True))
        )
    log.info("added one interaction for each of %d items that had none", len(missing))


def newest(root: Path) -> str | None:
    from index_builder.snapshot import newest_valid

    return newest_valid(root)


def ensure(work: Path, users: int, items: int) -> dict[str, tuple[Path, str]]:
    """Build what is missing; returns ``{"ivf": (root, version), "hnsw": (root, version)}``."""
    from index_builder.build import BuildOptions, build_snapshot
    from models.synth import write_synthetic

    work = Path(work)
    data_dir = work / "data" / DATASET
    if not (data_dir / f"{DATASET}.inter").exists():
        started = time.perf_counter()
        write_synthetic(data_dir, users, items, users * 5, seed=0, progress=True)
        cover_items(data_dir, users, items)
        log.info("synthetic data in %.0fs", time.perf_counter() - started)
    artifact = work / "artifact"
    if not (artifact / "model.safetensors").exists():
        started = time.perf_counter()
        train_artifact(data_dir, artifact)
        log.info("training in %.0fs", time.perf_counter() - started)
    out = {}
    for name, kind in (("ivf", "auto"), ("hnsw", "hnsw")):
        root = work / ("snapshots" if name == "ivf" else f"snapshots-{name}")
        version = newest(root)
        if version is None:
            started = time.perf_counter()
            options = BuildOptions(index=kind, target_recall=0.95, k=100, keep=1, progress=True,
                                   hnsw_ef_construction=200)  # fmt: skip
            version = build_snapshot(artifact, root, options)
            log.info("%s snapshot in %.0fs", name, time.perf_counter() - started)
        out[name] = (root, version)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sys.path.insert(0, str(ROOT))
    for name, (root, version) in ensure(args.work, args.users, args.items).items():
        print(f"{name}: {root / version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
