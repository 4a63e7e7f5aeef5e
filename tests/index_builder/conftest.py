"""Fixtures: a tiny seeded dataset in the ml-100k columns, a model trained on it, a snapshot."""

from __future__ import annotations

import os

# Spinning OpenMP waits slow faiss training ~10x when the cores are shared; this only takes
# effect if faiss has not been imported yet (see index_builder.cli).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import tomllib
from pathlib import Path

import numpy as np
import pytest

from index_builder.build import BuildOptions, build_snapshot
from models.config import TrainConfig
from models.experiment import run_training

ROOT = Path(__file__).resolve().parents[2]
GENRES = ("Action", "Comedy", "Drama", "Horror", "Sci-Fi", "Romance")
# Non-ASCII ids check the utf-8 round trip of the id tables.
ODD_ITEM, ODD_USER = "ítem-é7", "用户-3"


def write_tiny_dataset(
    folder: Path,
    users: int = 50,
    items: int = 200,
    interactions: int = 2000,
    seed: int = 0,
    popularity: float = 0.0,
) -> Path:
    """RecBole atomic files named ``tiny.*`` with the columns configs/ml-100k.toml reads;
    ``popularity`` > 0 skews every user's choices towards the first items (Zipf's exponent)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    user_ids = [ODD_USER if u == 3 else f"u{u}" for u in range(users)]
    item_ids = [ODD_ITEM if i == 7 else f"i{i}" for i in range(items)]
    lines = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
    for u in user_ids:
        age, gender = rng.integers(15, 70), rng.choice(["M", "F"])
        job, zip_code = rng.choice(["student", "writer", "other"]), rng.integers(10000, 99999)
        lines.append(f"{u}\t{age}\t{gender}\t{job}\t{zip_code}")
    (folder / "tiny.user").write_text("\n".join(lines) + "\n")
    lines = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    item_genres = [
        rng.choice(len(GENRES), size=rng.integers(1, 3), replace=False) for _ in item_ids
    ]
    for i, genres in zip(item_ids, item_genres, strict=True):
        names = " ".join(GENRES[g] for g in genres)
        lines.append(f"{i}\tTitle {i}\t{rng.integers(1950, 2000)}\t{names}")
    (folder / "tiny.item").write_text("\n".join(lines) + "\n")
    # Each user prefers one genre, so the model has something to learn.
    taste = rng.integers(0, len(GENRES), size=users)
    weights = np.array([[3.0 if t in g else 1.0 for g in item_genres] for t in range(len(GENRES))])
    weights *= (1.0 + np.arange(items)) ** -popularity
    weights /= weights.sum(1, keepdims=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for row in range(interactions):
        u = row % users
        i = rng.choice(items, p=weights[taste[u]])
        lines.append(f"{user_ids[u]}\t{item_ids[i]}\t{rng.integers(1, 6)}\t{880000000 + row}")
    (folder / "tiny.inter").write_text("\n".join(lines) + "\n")
    return folder


def tiny_config(data_dir: Path) -> TrainConfig:
    raw = tomllib.loads((ROOT / "configs" / "ml-100k.toml").read_text())
    raw["dataset"] = {"name": "tiny", "dir": str(data_dir)}
    raw["model"] = {"hidden": [16], "dim": 8}
    raw["train"] = {"epochs": 1, "batch_size": 256}
    return TrainConfig.from_dict(raw)


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Artifact folder of a tiny model trained one epoch on the tiny dataset."""
    base = tmp_path_factory.mktemp("tiny")
    data_dir = write_tiny_dataset(base / "data")
    out = base / "artifact"
    run_training(tiny_config(data_dir), "leave-last-out", out, data_dir=data_dir, progress=False)
    return out


FAST = BuildOptions(k=10, tuning_users=50, progress=False)


@pytest.fixture(scope="session")
def built(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(snapshots root, version) of one flat build of the tiny artifact; do not modify."""
    root = tmp_path_factory.mktemp("snapshots")
    return root, build_snapshot(tiny_artifact, root, FAST)
