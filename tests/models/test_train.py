"""The training loop: seeded reproducibility, early stopping, and what each batch is fed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import Tensor

from models.config import TrainConfig, TrainSettings
from models.data import load_dataset, make_split
from models.encoding import Histories, encode_dataset, fit_specs
from models.evaluate import interaction_matrix
from models.experiment import model_metrics
from models.features import FeatureSpec
from models.losses import LOSSES
from models.train import (
    Inputs,
    TrainResult,
    TwoTowerTrainTask,
    WeightAverage,
    averaged,
    train_model,
)
from models.two_tower import TwoTower


@dataclasses.dataclass
class Prepared:
    """The tiny dataset's leave-last-out split, encoded, with its training inputs."""

    config: TrainConfig
    user_spec: FeatureSpec
    item_spec: FeatureSpec
    inputs: Inputs
    train_rows: np.ndarray
    valid: sp.csr_matrix
    train: sp.csr_matrix

    def model(self) -> TwoTower:
        torch.manual_seed(0)
        return TwoTower(self.config.model, self.user_spec, self.item_spec)

    def settings(self, **changes: object) -> TrainSettings:
        return dataclasses.replace(self.config.train, **changes)

    def validate(self, model: TwoTower) -> dict[str, float]:
        return model_metrics(model, self.inputs, self.valid, self.train)


@pytest.fixture(scope="module")
def prepared(tiny_data_dir: Path, tiny_config: TrainConfig) -> Prepared:
    dataset = load_dataset(tiny_data_dir)
    split = make_split(dataset.interactions, "leave-last-out", 0)
    user_spec, item_spec = fit_specs(tiny_config, dataset, split)
    data = encode_dataset(dataset, user_spec, item_spec)
    inputs = Inputs(data, Histories.build(data, split.train), [("history", 100)])
    valid, train = (
        interaction_matrix(data.inter_users[r], data.inter_items[r], data.n_users, data.n_items)
        for r in (split.valid, split.train)
    )
    return Prepared(tiny_config, user_spec, item_spec, inputs, split.train, valid, train)


def weights(model: TwoTower) -> dict[str, Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()}


@pytest.mark.parametrize("loss", LOSSES)
def test_same_seed_gives_identical_weights_and_metrics(prepared: Prepared, loss: str) -> None:
    settings = prepared.settings(loss=loss, epochs=2)
    runs = []
    for _ in range(2):
        model = prepared.model()
        result = train_model(model, prepared.inputs, settings, prepared.validate, progress=False)
        runs.append((weights(model), result.history))
    (first, first_history), (second, second_history) = runs
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert first_history == second_history and len(first_history) == 2


def test_another_seed_gives_other_weights(prepared: Prepared) -> None:
    trained = []
    for seed in (0, 1):
        model = prepared.model()
        train_model(
            model,
            prepared.inputs,
            prepared.settings(seed=seed, epochs=1),
            prepared.validate,
            progress=False,
        )
        trained.append(model.item_tower.mlp[-1].weight.detach().clone())
    assert not torch.equal(*trained)


@pytest.mark.parametrize("loss", LOSSES)
def test_training_lowers_the_training_loss(prepared: Prepared, loss: str) -> None:
    settings = prepared.settings(loss=loss, epochs=4, lr=0.01)
    model = prepared.model()
    result = train_model(model, prepared.inputs, settings, prepared.validate, progress=False)
    losses = [row["loss"] for row in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_early_stopping_restores_the_weights_of_the_best_epoch(prepared: Prepared) -> None:
    # Scripted scores: best at epoch 2, then two worse epochs exhaust patience 2.
    scores = iter([0.1, 0.5, 0.3, 0.2, 0.9, 0.9])
    seen: list[dict[str, Tensor]] = []

    def validate(model: TwoTower) -> dict[str, float]:
        seen.append(weights(model))
        return {"recall@10": next(scores)}

    model = prepared.model()
    settings = prepared.settings(epochs=6, patience=2)
    result = train_model(model, prepared.inputs, settings, validate, progress=False)
    assert (result.best_epoch, result.best_metric) == (2, 0.5)
    assert [row["valid_recall@10"] for row in result.history] == [0.1, 0.5, 0.3, 0.2]
    assert len(seen) == 4 and not model.training
    restored = model.state_dict()
    assert all(torch.equal(restored[name], seen[1][name]) for name in restored)
    assert not torch.equal(restored["item_tower.mlp.1.weight"], seen[3]["item_tower.mlp.1.weight"])


def one_weight(value: float) -> torch.nn.Linear:
    layer = torch.nn.Linear(1, 1, bias=False)
    set_weight(layer, value)
    return layer


def set_weight(layer: torch.nn.Linear, value: float) -> None:
    with torch.no_grad():
        layer.weight.fill_(value)


def test_weight_average_starts_from_the_initial_weights_and_decays() -> None:
    layer = one_weight(1.0)
    ema = WeightAverage(layer, decay=0.75)
    set_weight(layer, 3.0)
    ema.update(layer)
    assert ema.shadow["weight"].item() == pytest.approx(0.75 * 1.0 + 0.25 * 3.0)
    set_weight(layer, 5.0)
    ema.update(layer)
    assert ema.shadow["weight"].item() == pytest.approx(0.75 * 1.5 + 0.25 * 5.0)
    for _ in range(60):  # the start's share 0.75 ** n vanishes
        ema.update(layer)
    assert ema.shadow["weight"].item() == pytest.approx(5.0)
    assert layer.weight.item() == 5.0  # the model's own weights are never touched
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="ema_decay"):
            WeightAverage(layer, decay=bad)


def test_averaged_weights_are_in_place_only_inside_the_block() -> None:
    layer = one_weight(2.0)
    ema = WeightAverage(layer, decay=0.9)
    set_weight(layer, 4.0)
    ema.update(layer)
    average = ema.shadow["weight"].item()
    with pytest.raises(RuntimeError, match="inside"), averaged(ema, layer):
        assert layer.weight.item() == pytest.approx(average)
        raise RuntimeError("inside")
    assert layer.weight.item() == 4.0
    with averaged(None, layer):
        assert layer.weight.item() == 4.0


def test_weight_averaging_validates_and_keeps_the_average_and_trains_the_same_path(
    prepared: Prepared,
) -> None:
    def run(decay: float) -> tuple[TrainResult, list[dict[str, Tensor]], dict[str, Tensor]]:
        scores = iter([0.1, 0.5, 0.3, 0.2])
        seen: list[dict[str, Tensor]] = []

        def validate(model: TwoTower) -> dict[str, float]:
            seen.append(weights(model))
            return {"recall@10": next(scores)}

        model = prepared.model()
        settings = prepared.settings(epochs=4, patience=2, ema_decay=decay)
        result = train_model(model, prepared.inputs, settings, validate, progress=False)
        return result, seen, weights(model)

    runs = {decay: run(decay) for decay in (0.0, 0.9)}
    (plain, plain_seen, _), (ema, ema_seen, ema_final) = runs[0.0], runs[0.9]
    # The average does not steer training: the same batches give the same losses.
    assert [r["loss"] for r in plain.history] == [r["loss"] for r in ema.history]
    key = "item_tower.mlp.1.weight"
    assert all(not torch.equal(a[key], b[key]) for a, b in zip(plain_seen, ema_seen, strict=True))
    assert ema.best_epoch == 2
    assert all(torch.equal(ema_final[name], ema_seen[1][name]) for name in ema_final)


def test_training_without_validation_ends_on_the_average(prepared: Prepared) -> None:
    finals = []
    for decay in (0.0, 0.9):
        model = prepared.model()
        settings = prepared.settings(epochs=2, ema_decay=decay)
        result = train_model(model, prepared.inputs, settings, None, progress=False)
        assert result.best_epoch == 2
        finals.append(weights(model))
    key = "item_tower.mlp.1.weight"
    assert not torch.equal(finals[0][key], finals[1][key])


def test_training_batches_see_the_history_before_each_entry_and_users_the_latest(
    prepared: Prepared,
) -> None:
    inputs, histories = prepared.inputs, prepared.inputs.histories
    entries = np.array([0, 3, 7])
    users = prepared.inputs.data.inter_users[histories.source_rows[entries]]
    tokens = inputs.data.item_tokens
    batch = inputs.users(users, entries)
    np.testing.assert_array_equal(batch["history"], histories.before(entries, 100, tokens))
    np.testing.assert_array_equal(
        inputs.users(users)["history"], histories.latest(users, 100, tokens)
    )
    np.testing.assert_array_equal(batch["user_id"], inputs.data.user_features["user_id"][users])


def test_known_positive_mask_marks_each_users_training_items(prepared: Prepared) -> None:
    task = TwoTowerTrainTask(prepared.model(), prepared.inputs, prepared.settings(), seed=0)
    data = prepared.inputs.data
    pairs = set(
        zip(
            data.inter_users[prepared.train_rows].tolist(),
            data.inter_items[prepared.train_rows].tolist(),
            strict=True,
        )
    )
    users, items = np.arange(data.n_users), np.arange(data.n_items)
    expected = [[(u, i) in pairs for i in items.tolist()] for u in users.tolist()]
    assert task._known(users, items).tolist() == expected
    assert sum(map(sum, expected)) == len(pairs) > 0


@pytest.mark.parametrize(
    "knobs",
    [{"loss": loss} for loss in LOSSES[:3]]
    + [
        {"loss": "listwise", "sampled_negatives": 5, "sampler": sampler}
        for sampler in ("uniform", "popularity")
    ],
)
def test_a_training_step_keeps_every_tensor_on_the_inputs_device(
    prepared: Prepared, knobs: dict
) -> None:
    # The meta device refuses to mix with CPU tensors as CUDA does, and runs without a GPU.
    inputs = dataclasses.replace(prepared.inputs, device="meta")
    model = prepared.model().to("meta")
    task = TwoTowerTrainTask(model, inputs, prepared.settings(**knobs), seed=0)
    loss = task.loss(np.arange(16))
    loss.backward()
    assert loss.device.type == "meta" and loss.shape == ()


def teacher_task(prepared: Prepared, model: TwoTower, **changes: object) -> TwoTowerTrainTask:
    settings = prepared.settings(teacher="ease", teacher_reg=10.0, **changes)
    return TwoTowerTrainTask(model, prepared.inputs, settings, seed=0)


def test_the_teacher_term_is_added_to_the_loss_with_its_weight(prepared: Prepared) -> None:
    model = prepared.model().eval()  # no dropout: every forward pass gives the same vectors
    task = teacher_task(prepared, model, teacher_weight=2.5)
    entries = np.arange(40)
    users = prepared.inputs.data.inter_users[prepared.inputs.histories.source_rows[entries]]
    with torch.no_grad():
        total = task.loss(entries).item()
        parts = task.task_loss(entries, users).item(), task.teacher_loss(users).item()
    assert parts[1] > 0
    assert total == pytest.approx(parts[0] + 2.5 * parts[1], rel=1e-5)
    assert TwoTowerTrainTask(model, prepared.inputs, prepared.settings(), 0).teacher is None


def test_the_teacher_learns_from_training_rows_only(prepared: Prepared) -> None:
    task = teacher_task(prepared, prepared.model())
    assert task.teacher is not None
    known = task.teacher.known.toarray() > 0
    np.testing.assert_array_equal(known, prepared.train.toarray() > 0)


def test_training_with_the_teacher_moves_the_model_towards_it(prepared: Prepared) -> None:
    users = np.arange(prepared.inputs.data.n_users)
    distances = {}
    for weight in (0.0, 5.0):
        model = prepared.model()
        settings = prepared.settings(
            epochs=4, lr=0.01, teacher="ease", teacher_reg=10.0, teacher_weight=weight
        )
        train_model(model, prepared.inputs, settings, None, progress=False)
        with torch.no_grad():
            distances[weight] = teacher_task(prepared, model.eval()).teacher_loss(users).item()
    assert distances[5.0] < distances[0.0]
