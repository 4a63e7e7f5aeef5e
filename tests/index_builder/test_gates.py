"""The publish gates of `recall build-index`: an index that misses its recall target and a
model below its most-popular baseline are not published, unless the build is told to (and
the manifest records it)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import index_builder.build as build_module
from index_builder.manifest import Check, Manifest
from index_builder.snapshot import list_snapshots, load_snapshot
from index_builder.tuning import Tuning
from models.experiment import run_training
from recall.cli import main
from tests.index_builder.conftest import tiny_config, write_tiny_dataset

BUILD = ["--k", "10", "--tuning-users", "50", "--no-progress"]


@pytest.fixture(autouse=True)
def _omp_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")


def build(artifact: Path, root: Path, *extra: str) -> int:
    return main(["build-index", "--artifact", str(artifact), "--snapshots", str(root),
                 *BUILD, *extra])  # fmt: skip


def published(root: Path) -> list[Manifest]:
    return [load_snapshot(root, s.version).manifest for s in list_snapshots(root)]


@pytest.fixture()
def worst_tuning(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tuner settles on its worst trial (IVF nprobe 1 here: recall@10 ~0.5), as a tuner
    that ran out of parameters would: the index is served at a recall below the target."""
    real = build_module.tune

    def tune(*args: Any, **kwargs: Any) -> Tuning:
        tuning = real(*args, **kwargs)
        worst = min(tuning.trials, key=lambda t: t["recall"])
        assert worst["recall"] < tuning.target_recall
        return replace(tuning, params=worst["params"], recall=worst["recall"],
                       target_reached=False)  # fmt: skip

    monkeypatch.setattr(build_module, "tune", tune)


@pytest.mark.usefixtures("worst_tuning")
def test_an_index_below_its_recall_target_is_not_published(
    tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    miss = ["--index", "ivf-flat"]
    assert build(tiny_artifact, tmp_path, *miss) == 1
    assert "ann_recall_below_target" in capsys.readouterr().err
    assert published(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []
    assert build(tiny_artifact, tmp_path, *miss, "--allow-below-target") == 0
    [manifest] = published(tmp_path)
    assert manifest.overrides == [Check.ANN_RECALL] and not manifest.tuning["target_reached"]
    assert "published past the gates" in capsys.readouterr().err


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact whose model never moved from its random start (learning rate 1e-12), on
    data where a few items are most users' choice (most-popular is strong there)."""
    base = tmp_path_factory.mktemp("untrained")
    data_dir = write_tiny_dataset(base / "data", popularity=1.2)
    config = tiny_config(data_dir).with_train(lr=1e-12, ema_decay=0.0)
    run_training(config, "leave-last-out", base / "artifact", data_dir=data_dir, progress=False)
    return base / "artifact"


def test_a_model_below_most_popular_is_not_published(
    untrained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test = json.loads((untrained / "metrics.json").read_text())["test"]
    assert test["two-tower"]["recall@10"] < test["most-popular"]["recall@10"]
    assert build(untrained, tmp_path) == 1
    assert "quality_below_baseline" in capsys.readouterr().err
    assert published(tmp_path) == []
    assert build(untrained, tmp_path, "--allow-below-baseline") == 0
    [manifest] = published(tmp_path)
    assert manifest.overrides == [Check.BELOW_BASELINE]
    shutil.rmtree(tmp_path)
