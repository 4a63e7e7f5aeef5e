"""run_training end to end on the tiny dataset: every loss, both kinds of protocol."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models import experiment, scoreboard
from models.artifact import load_artifact
from models.config import TrainConfig
from models.data import load_dataset, make_split
from models.experiment import (
    TABLE_METRICS,
    data_info,
    fit_on,
    format_table,
    profile_only,
    run_training,
)
from models.features import UNKNOWN
from models.inputs import Inputs
from models.losses import LOSSES
from models.task import TwoTowerTrainTask
from models.two_tower import TwoTower

from .conftest import Trained

PNG = b"\x89PNG\r\n\x1a\n"
METHODS = ["two-tower", "most-popular", "itemknn", "ease"]


@pytest.mark.parametrize("loss", LOSSES)
def test_run_training_writes_metrics_of_the_model_and_baselines_for_every_loss(
    trained: Trained, loss: str
) -> None:
    folder = trained(loss)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert (metrics["loss"], metrics["protocol"], metrics["seed"]) == (loss, "leave-last-out", 0)
    assert sorted(metrics["test"]) == sorted(METHODS)
    for method, values in metrics["test"].items():
        for name in TABLE_METRICS:
            assert 0.0 <= values[name] <= 1.0, (method, name)
    assert 1 <= metrics["best_epoch"] <= 2
    history = json.loads((folder / "training.json").read_text())
    assert [row["epoch"] for row in history][:1] == [1.0]
    assert all(np.isfinite(row["loss"]) for row in history)


def test_run_training_draws_the_recall_curve_and_training_curve_as_png(trained: Trained) -> None:
    for name in ("recall_at_k.png", "training_curve.png"):
        assert (trained() / name).read_bytes()[:8] == PNG


def test_leave_last_out_recall_equals_hit_rate_with_one_held_out_item_per_user(
    trained: Trained,
) -> None:
    # Leave-last-out holds out one item per user: recall@K equals hit rate@K for every method.
    for values in json.loads((trained() / "metrics.json").read_text())["test"].values():
        assert values["recall@10"] == pytest.approx(values["hr@10"])


def test_leave_last_out_uses_the_history_feature(trained: Trained) -> None:
    artifact = load_artifact(trained("listwise", "leave-last-out"))
    assert "history" in [f.name for f in artifact.config.user_features]
    assert "history" in artifact.model.user_tower.embeddings


def test_random_811_leaves_the_history_feature_out(trained: Trained) -> None:
    artifact = load_artifact(trained("listwise", "random-811"))
    assert [f.kind for f in artifact.config.user_features].count("history") == 0
    assert "history" not in artifact.model.user_tower.embeddings
    assert artifact.metrics["protocol"] == "random-811"
    assert sorted(artifact.metrics["test"]) == sorted(METHODS)


def test_data_info_names_the_dataset_split_and_a_run_fingerprint(
    trained: Trained, tiny_data_dir: Path
) -> None:
    artifact = load_artifact(trained())
    dataset = load_dataset(tiny_data_dir)
    split = make_split(dataset.interactions, "leave-last-out", 0)
    assert artifact.data == data_info(artifact.config, dataset.fingerprint, split, tiny_data_dir)
    assert artifact.data["split"]["fingerprint"] == split.fingerprint()
    assert len(artifact.fingerprint) == 16


def test_format_table_has_a_row_per_method_and_dashes_for_absent_metrics() -> None:
    rows = {"two-tower": {"recall@10": 0.25}, "ease": {"recall@10": 1.0, "ndcg@10": 0.5}}
    table = format_table(rows, metrics=("recall@10", "ndcg@10"))
    # Name column: longest name (9) + 2; metric columns right-aligned in 12.
    assert table.splitlines() == [
        "method        recall@10     ndcg@10",
        "-----------------------------------",
        "two-tower        0.2500           -",
        "ease             1.0000      0.5000",
    ]


def test_profile_only_blanks_the_user_id_and_history_and_keeps_the_profile(
    tiny_config: TrainConfig, tiny_data_dir: Path
) -> None:
    dataset = load_dataset(tiny_data_dir)
    split = make_split(dataset.interactions, "cold-users", 0)
    fitted = fit_on(tiny_config, dataset, split, split.train, None)
    rows = np.arange(fitted.data.n_users)
    before = fitted.inputs.users(rows)
    after = profile_only(fitted.inputs, fitted.user_spec).users(rows)
    assert (before["user_id"] != UNKNOWN).any() and len(before["history"].tokens) > 0
    assert (after["user_id"] == UNKNOWN).all()
    assert len(after["history"].tokens) == 0  # every history empty
    assert after["history"].offsets.tolist() == [0] * (len(rows) + 1)
    for name in ("age", "gender", "occupation", "zip_prefix"):
        assert torch.equal(after[name], before[name]), name


@pytest.mark.parametrize(("protocol", "blank"), [("cold-users", True), ("leave-last-out", False)])
def test_cold_users_validation_scores_users_from_their_profile_alone(
    tiny_config: TrainConfig,
    tiny_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    protocol: str,
    blank: bool,
) -> None:
    # Held-out users are scored from profile features only, so early stopping must judge the
    # model the same way; the test-time call scores through the ordinary inputs.
    seen: list[bool] = []
    real = experiment.model_metrics

    def recording(model: TwoTower, inputs: Inputs, *args: Any, **kw: Any) -> dict[str, float]:
        ids = inputs.data.user_features["user_id"]
        seen.append(bool((ids == UNKNOWN).all()) and len(inputs.histories.items) == 0)
        return real(model, inputs, *args, **kw)

    monkeypatch.setattr(experiment, "model_metrics", recording)  # validation
    monkeypatch.setattr(scoreboard, "model_metrics", recording)  # test
    run_training(tiny_config, protocol, tmp_path / "run", progress=False)
    validations, test = seen[:-1], seen[-1]
    assert validations and all(v == blank for v in validations)
    assert test is False


@pytest.mark.parametrize(
    ("protocol", "teacher"), [("random-811", "ease"), ("leave-last-out", "none")]
)
def test_run_training_applies_the_knobs_of_its_split(
    tiny_config: TrainConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    protocol: str,
    teacher: str,
) -> None:
    config = dataclasses.replace(
        tiny_config.with_train(epochs=1), split_train={"random-811": {"teacher": "ease"}}
    )
    taught: list[int] = []
    real = TwoTowerTrainTask.teacher_loss

    def recording(task: TwoTowerTrainTask, users: np.ndarray) -> torch.Tensor:
        taught.append(len(users))
        return real(task, users)

    monkeypatch.setattr(TwoTowerTrainTask, "teacher_loss", recording)
    artifact = run_training(config, protocol, tmp_path / "run", progress=False)
    assert artifact.config.train.teacher == teacher
    assert load_artifact(tmp_path / "run").config.train.teacher == teacher
    assert bool(taught) == (teacher == "ease")
