"""The 1M-item snapshots the load benchmark serves, built once and cached under ``--work``.

    .venv/bin/python bench/big_snapshot.py [--work bench/results] [--items 1000000]

Steps (each skipped when its output exists): ``models.synth.write_synthetic`` (``users`` users,
``items`` items, 5 interactions per user), plus one early interaction for every item that got
none (so every item has its own id embedding: items outside the vocabulary would share one,
and their vectors would tie) -> one epoch of ``recall train``'s run with configs/synth.toml
(dim 64; a run of any length averages what it trained, see models.averaging) ->
``index_builder`` builds with recall@100 >= 0.95 against exact
search: the automatic choice (IVF-Flat at 1M items) under ``<work>/snapshots`` and an HNSW32
one under ``<work>/snapshots-hnsw`` (the naive baseline's). The HNSW graph is built with
efConstruction 200: at the default 64, this catalogue's many near-duplicate tail items (one
interaction each) leave HNSW short of recall@100 0.95 at any efSearch (measured: 0.90).

The model is evaluated on a 2,000-user sample against most-popular and ItemKNN (EASE is
skipped past 20,000 items); the load benchmark needs a realistic user tower and distinct item
vectors more than offline quality.
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
    """One epoch of ``recall train``'s run on ``data_dir`` (configs/synth.toml's model and
    knobs; leave-last-out, validation and test on a 2,000-user sample) saved at ``out``."""
    from models.config import TrainConfig
    from models.experiment import run_training

    raw = tomllib.loads((ROOT / "configs" / "synth.toml").read_text())
    raw["dataset"] = {"name": DATASET, "dir": str(data_dir)}
    raw["train"] = {**raw["train"], "epochs": 1, "eval_users": 2000}
    run_training(TrainConfig.from_dict(raw), "leave-last-out", out, progress=True)
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


def ensure(
    work: Path, users: int, items: int, kinds: tuple[str, ...] = ("ivf", "hnsw")
) -> dict[str, tuple[Path, str]]:
    """Build what is missing of ``kinds``; returns ``{"ivf": (root, version), ...}``."""
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
        if name not in kinds:
            continue
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
