"""Shared fixtures: a tiny seeded synthetic dataset, a tiny training config, hand-made tables."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from models.config import TrainConfig
from models.experiment import run_training
from models.synth import write_synthetic

ROOT = Path(__file__).resolve().parents[2]
ML100K_CONFIG = ROOT / "configs" / "ml-100k.toml"
HEADERS = {
    "user": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
    "item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
    "inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float",
}


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors on two shared cores: a second intra-op thread only spins (20x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny.{user,item,inter}``: 40 users, 60 items, 800 interactions, ml-100k's columns."""
    out = tmp_path_factory.mktemp("data") / "tiny"
    return write_synthetic(out, 40, 60, 800, seed=0, clusters=4, progress=False)


def tiny_config_for(data_dir: Path, **train: object) -> TrainConfig:
    """configs/ml-100k.toml's features with a tiny model (hidden [16], dim 8) for 2 epochs."""
    raw = tomllib.loads(ML100K_CONFIG.read_text())
    raw["dataset"] = {"name": data_dir.name, "dir": str(data_dir)}
    raw["model"] = {"hidden": [16], "dim": 8}
    raw["train"] = {"epochs": 2, "batch_size": 64, **train}
    return TrainConfig.from_dict(raw)


@pytest.fixture(scope="session")
def config_for() -> Callable[..., TrainConfig]:
    """``config_for(data_dir, **train_knobs)``: the tiny config for another dataset folder."""
    return tiny_config_for


@pytest.fixture(scope="session")
def tiny_config(tiny_data_dir: Path) -> TrainConfig:
    return tiny_config_for(tiny_data_dir)


WriteAtomic = Callable[..., Path]


@pytest.fixture
def write_atomic(tmp_path: Path) -> WriteAtomic:
    """``write(name, inter=[(user, item, timestamp)], users=[(id, age, gender, job, zip)],
    items=[(id, year, "Genre Genre")])`` -> folder ``name`` with the given atomic files."""

    def write(
        name: str,
        inter: list[tuple[str, str, float]],
        users: list[tuple[str, ...]] | None = None,
        items: list[tuple[str, str, str]] | None = None,
    ) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        rows = {"inter": [(u, i, "5", str(t)) for u, i, t in inter]}
        if users is not None:
            rows["user"] = list(users)
        if items is not None:
            rows["item"] = [(i, f"title-{i}", year, genres) for i, year, genres in items]
        for suffix, lines in rows.items():
            text = "\n".join([HEADERS[suffix], *("\t".join(line) for line in lines)]) + "\n"
            (folder / f"{name}.{suffix}").write_text(text)
        return folder

    return write


Trained = Callable[..., Path]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir: Path) -> Trained:
    """``trained(loss, protocol)``: artifact folder of a tiny run (each made once; read only)."""
    made: dict[tuple[str, str], Path] = {}

    def train(loss: str = "listwise", protocol: str = "leave-last-out") -> Path:
        if (loss, protocol) not in made:
            out = tmp_path_factory.mktemp("artifacts") / f"{loss}-{protocol}"
            run_training(tiny_config_for(tiny_data_dir, loss=loss), protocol, out, progress=False)
            made[loss, protocol] = out
        return made[loss, protocol]

    return train
