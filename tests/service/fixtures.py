"""Tiny seeded data, a tiny trained model and two snapshots of it, built once per session.

Shared by tests/service and tests/integration: both conftests call ``shared_snapshots``,
which builds into the session's base temp folder the first time and reuses it after.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

import pytest

from index_builder.build import BuildOptions, build_snapshot
from models.config import TrainConfig
from models.experiment import run_training
from models.synth import write_synthetic

ROOT = Path(__file__).resolve().parents[2]
DATASET = "tiny"
ADMIN_TOKEN = "test-admin-token-0123456789"


@pytest.fixture(autouse=True)
def no_recall_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings in the tests come from the tests, not from the machine's RECALL_* vars."""
    for key in list(os.environ):
        if key.startswith("RECALL_"):
            monkeypatch.delenv(key)


def tiny_config(data_dir: Path) -> TrainConfig:
    """configs/ml-100k.toml's features with a tiny model and one epoch."""
    raw = tomllib.loads((ROOT / "configs" / "ml-100k.toml").read_text())
    raw["dataset"] = {"name": DATASET, "dir": str(data_dir)}
    raw["model"] = {**raw["model"], "hidden": [16], "dim": 8}
    raw["train"] = {**raw["train"], "epochs": 1, "batch_size": 256, "patience": 1}
    return TrainConfig.from_dict(raw)


def build_all(base: Path) -> tuple[Path, list[str]]:
    """Dataset -> artifact -> two snapshots (oldest first) under ``base/snapshots``."""
    data_dir = write_synthetic(base / DATASET, users=60, items=120, interactions=1500,
                               seed=0, clusters=4, progress=False)  # fmt: skip
    artifact = base / "artifact"
    run_training(tiny_config(data_dir), "leave-last-out", artifact, data_dir=data_dir,
                 progress=False)  # fmt: skip
    root = base / "snapshots"
    options = BuildOptions(index="flat", k=10, tuning_users=20, progress=False)
    versions = [build_snapshot(artifact, root, options) for _ in range(2)]
    return root, versions


def shared_snapshots(base: Path) -> tuple[Path, list[str]]:
    """``build_all`` once per session (``base`` is the session's base temp folder)."""
    root = base / "shared" / "snapshots"
    done = base / "shared" / "versions.txt"
    if not done.exists():
        shutil.rmtree(base / "shared", ignore_errors=True)
        _, versions = build_all(base / "shared")
        done.write_text("\n".join(versions))
    return root, done.read_text().split("\n")


def copy_snapshots(root: Path, dest: Path, versions: list[str] | None = None) -> Path:
    """A private copy of some (default: all) snapshots, for tests that change files."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in root.iterdir():
        if (
            path.is_dir()
            and not path.name.startswith(".")
            and (versions is None or path.name in versions)
        ):
            shutil.copytree(path, dest / path.name)
    return dest
