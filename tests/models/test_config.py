"""Training configs: the shipped ml-100k file, round trips, and errors that name what to fix."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from models.config import TrainConfig, TrainSettings, load_config
from models.features import FeatureConfigError, FeatureDef

from .conftest import ML100K_CONFIG

CONFIG_TEXT = ML100K_CONFIG.read_text()


def test_load_config_reads_the_shipped_ml100k_config() -> None:
    config = load_config(ML100K_CONFIG)
    assert (config.dataset, config.data_dir) == ("ml-100k", "data/ml-100k")
    assert [(f.name, f.kind) for f in config.user_features] == [
        ("user_id", "id"),
        ("age", "bucket"),
        ("gender", "categorical"),
        ("occupation", "categorical"),
        ("zip_prefix", "categorical"),
        ("history", "history"),
    ]
    assert config.user_features[1].boundaries == (18.0, 25.0, 35.0, 45.0, 50.0, 56.0)
    assert config.user_features[4] == FeatureDef("zip_prefix", "categorical", "zip_code", prefix=2)
    assert [(f.name, f.source) for f in config.item_features] == [
        ("item_id", "item_id"),
        ("genres", "class"),
        ("release_year", "release_year"),
    ]
    assert config.train.loss == "listwise"
    assert config.model.dim > 0 and config.model.temperature > 0


def test_config_survives_the_dict_round_trip_stored_in_artifacts() -> None:
    config = load_config(ML100K_CONFIG)
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_with_train_changes_only_the_knobs_that_are_given() -> None:
    config = load_config(ML100K_CONFIG)
    changed = config.with_train(loss="pointwise", seed=None, epochs=3)
    assert changed.train == dataclasses.replace(config.train, loss="pointwise", epochs=3)
    assert changed.model == config.model and changed.user_features == config.user_features


def edited(tmp_path: Path, pattern: str, new: str) -> Path:
    """The shipped config with the first match of the regex ``pattern`` replaced by ``new``."""
    text, found = re.subn(pattern, lambda _: new, CONFIG_TEXT, count=1, flags=re.M)
    assert found == 1, pattern
    path = tmp_path / "edited.toml"
    path.write_text(text)
    return path


lit = re.escape


@pytest.mark.parametrize(
    ("pattern", "new", "message"),
    [
        (r"^\[train\]$", "[train]\nbatch = 3", r"\[train\] has unknown keys \['batch'\]"),
        (r"^\[model\]$", "[model]\nwidth = 3", r"\[model\] has unknown keys \['width'\]"),
        (lit('kind = "bucket"'), 'kind = "buckets"', "kind 'buckets' not in"),
        (lit("boundaries = [18, 25"), "boundaries = [25, 18", "boundaries must be sorted"),
        (
            lit('name = "item_id"\nkind = "id"'),
            'name = "item_id"\nkind = "categorical"',
            "item_features",
        ),
        (lit('name = "gender"'), 'name = "age"', "duplicate names"),
        (
            lit('"release_year"\nkind = "numeric"'),
            '"h"\nkind = "history"',
            "history and sequence are user features",
        ),
        (lit('name = "gender"\nkind = "categorical"'), 'name = "g"\nkind = "id"', "exactly one"),
        (r"^\[dataset\]$", "[dataset", "edited.toml"),
        (r"^loss = .*$", 'loss = "list-wise"', "loss 'list-wise' is not one of"),
        (r"^\[train\]$", '[train]\nsampler = "zipf"', "sampler 'zipf' is not one of"),
        (r"^ema_decay = .*$", "ema_decay = 1.0", r"ema_decay must be in \[0, 1\), got 1.0"),
        (r"^teacher = .*$", 'teacher = "bert"', "teacher 'bert' is not one of"),
        (r"^teacher_weight = .*$", "teacher_weight = -1.0", "teacher_weight must be a finite"),
        (r"^\[train\]$", "[train]\nteacher_reg = 0.0", "teacher_reg must be a finite number > 0"),
        (
            r"^\[train\]$",
            "[train]\nteacher_temperature = nan",
            "teacher_temperature must be a finite number > 0",
        ),
    ],
)
def test_load_config_rejects_a_bad_config_naming_the_file_and_the_problem(
    tmp_path: Path, pattern: str, new: str, message: str
) -> None:
    path = edited(tmp_path, pattern, new)
    with pytest.raises(FeatureConfigError, match=message) as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_load_config_of_a_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("loss", "sampler", "in_effect"),
    [
        ("listwise", "auto", "popularity"),  # its logQ correction undoes the sampling bias
        ("pointwise", "auto", "uniform"),
        ("pairwise-hinge", "auto", "uniform"),
        ("pairwise-logistic", "auto", "uniform"),
        ("pointwise", "popularity", "popularity"),  # an explicit choice wins
        ("listwise", "uniform", "uniform"),
    ],
)
def test_auto_sampler_is_popularity_only_for_the_corrected_loss(
    loss: str, sampler: str, in_effect: str
) -> None:
    assert TrainSettings(loss=loss, sampler=sampler).negative_sampler == in_effect
    assert TrainSettings().sampler == "auto"


def test_split_tables_change_training_knobs_under_their_split_only() -> None:
    config = load_config(ML100K_CONFIG)
    table = {"teacher": "ease", "teacher_weight": 0.7, "patience": 8, "epochs": 60}
    assert config.split_train == {"random-811": table}
    assert config.train.teacher == "none"
    random = config.for_split("random-811")
    assert (random.train.teacher, random.train.teacher_weight) == ("ease", 0.7)
    assert (random.train.patience, config.train.patience) == (8, 4)
    assert random.split_train == {} and random.for_split("random-811") == random
    assert config.for_split("leave-last-out").train == config.train
    # What the command line sets afterwards wins over the split's table.
    assert random.with_train(teacher="none").train.teacher == "none"


def test_split_tables_survive_the_artifact_round_trip() -> None:
    raw = load_config(ML100K_CONFIG).to_dict()
    table = {"teacher": "ease", "teacher_weight": 0.7, "patience": 8, "epochs": 60}
    assert raw["train"]["random-811"] == table
    applied = load_config(ML100K_CONFIG).for_split("random-811").to_dict()
    assert applied["train"]["teacher"] == "ease" and "random-811" not in applied["train"]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[train.random-812]\nlr = 0.1", r"\[train.random-812\]: 'random-812' is not a split"),
        ("[train.cold-users]\nbatch = 3", r"\[train.cold-users\] has unknown keys \['batch'\]"),
        ("[train.cold-users]\nema_decay = 2.0", r"ema_decay must be in \[0, 1\), got 2.0"),
    ],
)
def test_a_bad_split_table_is_refused_naming_it(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "split.toml"
    path.write_text(CONFIG_TEXT + "\n" + table + "\n")
    with pytest.raises(FeatureConfigError, match=message) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
