"""The training loop: seeded reproducibility, early stopping, and what each batch is fed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import Tensor

from models.averaging import WeightAverage, averaged
from models.config import TrainConfig, TrainSettings
from models.data import load_dataset, make_split
from models.encoding import Histories, encode_dataset, fit_specs
from models.evaluate import interaction_matrix
from models.features import FeatureSpec
from models.inputs import Inputs
from models.losses import LOSSES
from models.scoreboard import model_metrics
from models.task import KnownItems, TwoTowerTrainTask
from models.train import TrainResult, train_model
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
    inputs = Inputs(data, Histories.build(data, split.train), user_spec, item_spec)
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


def test_weight_average_caps_the_share_of_the_initial_weights() -> None:
    layer = one_weight(1.0)
    ema = WeightAverage(layer, decay=0.75, start_share=0.1)
    assert ema.averaged(layer)["weight"].item() == 1.0  # no step yet: the live weights
    set_weight(layer, 3.0)
    ema.update(layer)
    # m1 = 0.25 * 3; the start would keep 0.75 of a classic EMA, capped at 0.1:
    # 0.9 * m1 / (1 - 0.75) + 0.1 * 1 = 2.8.
    assert ema.averaged(layer)["weight"].item() == pytest.approx(2.8)
    set_weight(layer, 5.0)
    ema.update(layer)
    # m2 = 0.75 * 0.75 + 0.25 * 5 = 1.8125; 0.9 * 1.8125 / 0.4375 + 0.1.
    assert ema.averaged(layer)["weight"].item() == pytest.approx(0.9 * 1.8125 / 0.4375 + 0.1)
    for _ in range(8):  # 0.75^10 < 0.1: the classic EMA from the start, m + 0.75^10 * 1
        ema.update(layer)
    m = 0.75**8 * 1.8125 + (1 - 0.75**8) * 5.0
    assert ema.averaged(layer)["weight"].item() == pytest.approx(m + 0.75**10)
    assert layer.weight.item() == 5.0  # the model's own weights are never touched
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="ema_decay"):
            WeightAverage(layer, decay=bad)
    with pytest.raises(ValueError, match="ema_start_share"):
        WeightAverage(layer, decay=0.5, start_share=1.5)


def test_start_share_one_is_the_classic_average_and_zero_the_bias_corrected_one() -> None:
    layers = {share: one_weight(1.0) for share in (1.0, 0.0)}
    emas = {share: WeightAverage(layer, 0.75, start_share=share) for share, layer in layers.items()}
    for share, layer in layers.items():
        set_weight(layer, 3.0)
        emas[share].update(layer)
    assert emas[1.0].averaged(layers[1.0])["weight"].item() == pytest.approx(0.75 + 0.25 * 3)
    assert emas[0.0].averaged(layers[0.0])["weight"].item() == pytest.approx(3.0)


def test_lazy_average_of_a_sparse_table_equals_the_every_step_average() -> None:
    torch.manual_seed(0)
    decay = 0.9

    def run(sparse: bool) -> Tensor:
        torch.manual_seed(0)
        table = torch.nn.Embedding(6, 3, sparse=sparse)
        optimiser = (torch.optim.SparseAdam if sparse else torch.optim.Adam)(
            table.parameters(), lr=0.1
        )
        names = {"weight"} if sparse else set()
        ema = WeightAverage(table, decay, names)
        for rows in ([0, 1], [1], [4, 4, 0], [5], [1, 2]):  # rows 3 never trained
            optimiser.zero_grad()
            table(torch.tensor(rows)).pow(2).sum().backward()
            ema.before_step(table)
            optimiser.step()
            ema.update(table)
        return ema.averaged(table)["weight"]

    # SparseAdam and Adam differ on untouched rows (Adam keeps moving them on momentum), so
    # compare the lazy average with the every-step average of the same sparse trajectory.
    lazy = run(True)
    torch.manual_seed(0)
    table = torch.nn.Embedding(6, 3, sparse=True)
    optimiser = torch.optim.SparseAdam(table.parameters(), lr=0.1)
    shadow, steps = torch.zeros(6, 3), 0
    for rows in ([0, 1], [1], [4, 4, 0], [5], [1, 2]):
        optimiser.zero_grad()
        table(torch.tensor(rows)).pow(2).sum().backward()
        optimiser.step()
        steps += 1
        shadow = decay * shadow + (1 - decay) * table.weight.detach()
    share = min(decay**steps, 0.1)
    torch.manual_seed(0)  # the same seed: the same initial weights
    start = torch.nn.Embedding(6, 3, sparse=True).weight.detach()
    expected = (1 - share) * shadow / (1 - decay**steps) + share * start
    torch.testing.assert_close(lazy, expected)


def test_averaged_weights_are_in_place_only_inside_the_block() -> None:
    layer = one_weight(2.0)
    ema = WeightAverage(layer, decay=0.9)
    set_weight(layer, 4.0)
    ema.update(layer)
    set_weight(layer, 6.0)
    ema.update(layer)
    average = ema.averaged(layer)["weight"].item()
    # m2 = 0.9 * 0.4 + 0.1 * 6 = 0.96; the start's share capped at 0.1 (of 0.81).
    assert average == pytest.approx(0.9 * 0.96 / (1 - 0.81) + 0.1 * 2.0)
    with pytest.raises(RuntimeError, match="inside"), averaged(ema, layer):
        assert layer.weight.item() == pytest.approx(average)
        raise RuntimeError("inside")
    assert layer.weight.item() == 6.0
    with averaged(None, layer):
        assert layer.weight.item() == 6.0


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
    entries = torch.tensor([0, 3, 7])
    users = torch.from_numpy(inputs.data.inter_users[histories.source_rows[entries.numpy()]])
    batch = inputs.users(users, entries)
    assert torch.equal(batch["history"].tokens, inputs.history.before(users, entries, 100).tokens)
    assert torch.equal(
        inputs.users(users)["history"].tokens, inputs.history.latest(users, 100).tokens
    )
    np.testing.assert_array_equal(batch["user_id"], inputs.data.user_features["user_id"][users])


@pytest.mark.parametrize("dense_cells", [16_000_000, 0])  # the dense table and the CSR walk
def test_known_positive_mask_marks_each_users_training_items(
    prepared: Prepared, dense_cells: int
) -> None:
    data = prepared.inputs.data
    pairs = set(
        zip(
            data.inter_users[prepared.train_rows].tolist(),
            data.inter_items[prepared.train_rows].tolist(),
            strict=True,
        )
    )
    known = KnownItems(
        data.inter_users[prepared.train_rows],
        data.inter_items[prepared.train_rows],
        data.n_users,
        data.n_items,
        dense_cells=dense_cells,
    )
    assert (known.table is None) == (dense_cells == 0)
    # Users and columns repeat, as in a batch (popular positives, heavy users).
    users = torch.cat([torch.arange(data.n_users), torch.tensor([0, 0, 3])])
    items = torch.cat([torch.arange(data.n_items), torch.tensor([5, 5, 0])])
    expected = [[float((u, i) in pairs) for i in items.tolist()] for u in users.tolist()]
    assert known.mask(users, items).tolist() == expected
    assert sum(map(sum, expected)) > len(pairs) > 0


def tensors_of(value: object, seen: set[int] | None = None) -> list[Tensor]:
    """Every tensor reachable through attributes, lists, tuples and dicts of ``value``."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return []
    seen.add(id(value))
    if isinstance(value, Tensor):
        return [value]
    children: list[object] = []
    if isinstance(value, dict):
        children = list(value.values())
    elif isinstance(value, list | tuple):
        children = list(value)
    elif hasattr(value, "__dict__") and not isinstance(value, torch.nn.Module | np.ndarray):
        children = list(vars(value).values())
    return [t for child in children for t in tensors_of(child, seen)]


def test_inputs_and_task_build_every_lookup_table_on_the_inputs_device(
    prepared: Prepared,
) -> None:
    # A step cannot run on the meta device (ragged batches have data-dependent shapes), but
    # everything built once for the steps must land there, as it would on a GPU.
    p = prepared.inputs
    inputs = Inputs(p.data, p.histories, p.user_spec, p.item_spec, device="meta")
    task = TwoTowerTrainTask(prepared.model().to("meta"), inputs, prepared.settings(), seed=0)
    held = tensors_of(inputs) + tensors_of(task.known) + [task.pos_log_q, task.entry_users]
    assert len(held) > 10
    assert {t.device.type for t in held} == {"meta"}


def teacher_task(prepared: Prepared, model: TwoTower, **changes: object) -> TwoTowerTrainTask:
    settings = prepared.settings(teacher="ease", teacher_reg=10.0, **changes)
    return TwoTowerTrainTask(model, prepared.inputs, settings, seed=0)


def test_the_teacher_term_is_added_to_the_loss_with_its_weight(prepared: Prepared) -> None:
    model = prepared.model().eval()  # no dropout: every forward pass gives the same vectors
    task = teacher_task(prepared, model, teacher_weight=2.5)
    entries = torch.arange(40)
    users = torch.from_numpy(
        prepared.inputs.data.inter_users[prepared.inputs.histories.source_rows[entries.numpy()]]
    )
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
    users = torch.arange(prepared.inputs.data.n_users)
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


def test_a_weight_field_weighs_each_entry_by_its_interaction_value(prepared: Prepared) -> None:
    p = prepared.inputs
    task = TwoTowerTrainTask(prepared.model(), p, prepared.settings(weight_field="rating"), 0)
    ratings = p.data.inter_numbers["rating"][p.histories.source_rows]
    assert task.weights is not None and len(set(ratings.tolist())) > 1
    np.testing.assert_allclose(task.weights.numpy(), ratings / ratings.mean(), rtol=1e-6)
    assert TwoTowerTrainTask(prepared.model(), p, prepared.settings(), 0).weights is None
    with pytest.raises(ValueError, match=r"weight_field 'stars'.*\['rating'\]"):
        TwoTowerTrainTask(prepared.model(), p, prepared.settings(weight_field="stars"), 0)


def test_weights_must_be_finite_and_not_negative(prepared: Prepared) -> None:
    p = prepared.inputs
    data = dataclasses.replace(p.data, inter_numbers={"rating": p.data.inter_numbers["rating"]})
    data.inter_numbers["rating"] = data.inter_numbers["rating"].copy()
    data.inter_numbers["rating"][p.histories.source_rows[3]] = -1.0
    inputs = Inputs(data, p.histories, p.user_spec, p.item_spec)
    with pytest.raises(ValueError, match="1 training rows.*finite numbers >= 0"):
        TwoTowerTrainTask(prepared.model(), inputs, prepared.settings(weight_field="rating"), 0)
