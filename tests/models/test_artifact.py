"""Artifacts: bit-exact round trips, no pickle, atomic replacement, and warm starts by id."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from models.artifact import (
    Artifact,
    ArtifactInvalidError,
    WarmStartError,
    load_artifact,
    save_artifact,
    warm_start,
)
from models.config import TrainConfig
from models.data import load_dataset
from models.encoding import Histories, encode_dataset
from models.experiment import run_training
from models.features import FeatureDef, FeatureSpec
from models.train import Inputs, all_item_vectors, user_vectors
from models.two_tower import ModelConfig, TwoTower

from .conftest import Trained, tiny_config_for

FILES = [
    "config.json",
    "data.json",
    "features.json",
    "metrics.json",
    "model.safetensors",
    "recall_at_k.png",
    "training.json",
    "training_curve.png",
]


def vectors(artifact: Artifact, data_dir: Path) -> tuple[Tensor, Tensor]:
    """All user and item vectors of ``artifact`` on the dataset in ``data_dir``."""
    data = encode_dataset(load_dataset(data_dir), artifact.user_spec, artifact.item_spec)
    histories = Histories.build(data, np.arange(len(data.inter_users)))
    inputs = Inputs(data, histories, artifact.user_spec, artifact.item_spec)
    users = user_vectors(artifact.model, inputs, np.arange(data.n_users))
    return users, all_item_vectors(artifact.model, inputs)


def copy_of(trained: Trained, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained(), tmp_path / "artifact"))


def test_save_then_load_gives_bit_identical_weights_and_vectors(
    trained: Trained, tiny_data_dir: Path, tmp_path: Path
) -> None:
    original = load_artifact(trained())
    saved = save_artifact(original, tmp_path / "again")
    loaded = load_artifact(saved)
    state, loaded_state = original.model.state_dict(), loaded.model.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[name], loaded_state[name]) for name in state)
    for before, after in zip(
        vectors(original, tiny_data_dir), vectors(loaded, tiny_data_dir), strict=True
    ):
        assert torch.equal(before, after)
    assert not loaded.model.training
    assert loaded.config == original.config
    assert (loaded.user_spec, loaded.item_spec) == (original.user_spec, original.item_spec)
    assert (loaded.data, loaded.metrics, loaded.history) == (
        original.data,
        original.metrics,
        original.history,
    )


def test_artifact_folder_holds_safetensors_json_and_png_but_no_pickle(trained: Trained) -> None:
    folder = trained()
    assert sorted(path.name for path in folder.iterdir()) == FILES
    for path in folder.iterdir():
        head = path.read_bytes()[:4]
        # Pickle protocol 2+ starts with 0x80; torch.save writes a zip ("PK").
        assert head[:1] != b"\x80" and head[:2] != b"PK", path.name
    config = json.loads((folder / "config.json").read_text())
    assert config["format_version"] == 1 and config["model"]["dim"] == 8


def test_saving_over_an_artifact_replaces_it_and_leaves_no_temporary_folders(
    trained: Trained, tmp_path: Path
) -> None:
    out = copy_of(trained, tmp_path)
    artifact = load_artifact(out)
    artifact.metrics = {"note": "second"}
    save_artifact(artifact, out)
    assert load_artifact(out).metrics == {"note": "second"}
    assert [path.name for path in tmp_path.iterdir()] == ["artifact"]
    assert sorted(path.name for path in out.iterdir()) == FILES  # plots carried over


def test_a_failed_save_keeps_the_old_artifact_whole(trained: Trained, tmp_path: Path) -> None:
    out = copy_of(trained, tmp_path)
    artifact = load_artifact(out)
    before = artifact.metrics
    artifact.metrics = {"not json": object()}
    with pytest.raises(TypeError):
        save_artifact(artifact, out)
    assert load_artifact(out).metrics == before
    assert [path.name for path in tmp_path.iterdir()] == ["artifact"]


def corrupt_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            config[section][name] = value
        else:
            config[section] = value
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "config.json").unlink(), "missing config.json"),
        (lambda f: (f / "model.safetensors").unlink(), "missing model.safetensors"),
        (lambda f: (f / "features.json").write_text("{"), "features.json: not valid JSON"),
        (lambda f: corrupt_config(f, format_version=99), "format_version 99"),
        (lambda f: corrupt_config(f, model__dim=9), "weights do not match config"),
        (lambda f: shutil.rmtree(f), "no such artifact folder"),
    ],
)
def test_load_rejects_a_damaged_artifact_saying_what_is_wrong(
    trained: Trained, tmp_path: Path, damage, message: str
) -> None:
    out = copy_of(trained, tmp_path)
    damage(out)
    with pytest.raises(ArtifactInvalidError, match=message):
        load_artifact(out)


def specs(item_ids: list[str]) -> tuple[FeatureSpec, FeatureSpec]:
    """User (id + history) and item (id) specs; the item vocabulary follows ``item_ids``."""
    user = FeatureSpec("user", [FeatureDef("user_id", "id"), FeatureDef("history", "history")])
    item = FeatureSpec("item", [FeatureDef("item_id", "id")]).fit({}, item_ids)
    return user.fit({}, ["u1", "u2"], item_vocab_size=len(item.vocabs["item_id"])), item


def warm_started(
    old_specs: tuple[FeatureSpec, FeatureSpec], new_specs: tuple[FeatureSpec, FeatureSpec]
) -> tuple[TwoTower, TwoTower, dict[str, Tensor], dict[str, int]]:
    """(old model, new model warm-started from it, the new one's weights before, rows copied)."""
    config = ModelConfig(hidden=[8], dim=4)
    torch.manual_seed(0)
    old = TwoTower(config, *old_specs)
    torch.manual_seed(1)
    new = TwoTower(config, *new_specs)
    fresh = {name: value.clone() for name, value in new.state_dict().items()}
    train_config = TrainConfig("x", "", old_specs[0].features, old_specs[1].features, config)
    copied = warm_start(new, Artifact(old, train_config, *old_specs))
    return old, new, fresh, copied


def test_warm_start_copies_rows_for_shared_ids_only(tmp_path: Path) -> None:
    old_user, old_item = specs(["a", "b", "c"])  # rows a=1, b=2, c=3
    new_user, new_item = specs(["c", "d", "a"])  # rows c=1, d=2, a=3
    old, new, fresh, copied = warm_started((old_user, old_item), (new_user, new_item))

    assert copied == {"user_tower.user_id": 2, "user_tower.history": 2, "item_tower.item_id": 2}
    for table in ("item_tower.embeddings.item_id.weight", "user_tower.embeddings.history.weight"):
        old_rows, new_rows = old.state_dict()[table], new.state_dict()[table]
        torch.testing.assert_close(new_rows[[0, 1, 3]], old_rows[[0, 3, 1]], rtol=0, atol=0)
        torch.testing.assert_close(new_rows[2], fresh[table][2], rtol=0, atol=0)  # d is new
    for name, value in old.state_dict().items():
        if ".mlp." in name:  # same shapes: dense layers are copied whole
            assert torch.equal(new.state_dict()[name], value)


def test_warm_start_keeps_the_shared_dimensions_of_a_grown_table() -> None:
    """Sizes chosen from a grown catalogue: rows and the first dimensions carry over, and the
    first layer keeps each feature's part of its input (issue: tables were dropped silently)."""
    old_user, old_item = specs(["a", "b", "c"])
    new_user, new_item = specs(["a", "b", "c", "d"])
    for spec, dim in ((old_user, 3), (old_item, 3), (new_user, 5), (new_item, 5)):
        spec.dims = {name: dim for name in spec.dims}
    old, new, fresh, copied = warm_started((old_user, old_item), (new_user, new_item))

    assert copied == {"user_tower.user_id": 2, "user_tower.history": 3, "item_tower.item_id": 3}
    old_state, new_state = old.state_dict(), new.state_dict()
    table = "item_tower.embeddings.item_id.weight"  # rows a, b, c: the same numbers both times
    assert torch.equal(new_state[table][:4, :3], old_state[table][:4, :3])
    assert torch.equal(new_state[table][:, 3:], fresh[table][:, 3:])  # the new dimensions
    assert torch.equal(new_state[table][4], fresh[table][4])  # d is new
    # user tower input: user_id [0:3) -> [0:5), history [3:6) -> [5:10)
    first, old_first = new_state["user_tower.mlp.1.weight"], old_state["user_tower.mlp.1.weight"]
    assert torch.equal(first[:, [0, 1, 2, 5, 6, 7]], old_first)
    assert torch.equal(first[:, [3, 4, 8, 9]], fresh["user_tower.mlp.1.weight"][:, [3, 4, 8, 9]])
    assert torch.equal(new_state["user_tower.mlp.4.weight"], old_state["user_tower.mlp.4.weight"])


@pytest.mark.parametrize(
    ("old_feature", "new_feature", "named"),
    [
        (
            FeatureDef("age", "categorical"),
            FeatureDef("age", "bucket", boundaries=(18.0,)),
            "categorical",
        ),
        (
            FeatureDef("age", "bucket", boundaries=(18.0, 30.0)),
            FeatureDef("age", "bucket", boundaries=(20.0, 30.0)),
            "boundaries",
        ),
    ],
)
def test_warm_start_refuses_a_table_whose_rows_changed_meaning(
    old_feature: FeatureDef, new_feature: FeatureDef, named: str
) -> None:
    config = ModelConfig(hidden=[8], dim=4)
    _, item = specs(["a", "b"])
    sides = []
    for feature in (old_feature, new_feature):
        user = FeatureSpec("user", [FeatureDef("user_id", "id"), feature])
        sides.append(user.fit({"age": ["20", "40"]}, ["u1", "u2"]))
    old, new = TwoTower(config, sides[0], item), TwoTower(config, sides[1], item)
    train_config = TrainConfig("x", "", sides[0].features, item.features, config)
    with pytest.raises(WarmStartError, match=rf"user_tower\.age.*{named}"):
        warm_start(new, Artifact(old, train_config, sides[0], item))


def test_a_run_with_init_from_grows_every_table_from_a_smaller_artifact(
    trained: Trained, tiny_data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``recall train --init-from``: larger automatic sizes (as a grown catalogue gets) still
    copy every table, and the log says how much of each."""
    previous = load_artifact(trained())
    config = tiny_config_for(tiny_data_dir, epochs=1)
    config = replace(config, model=replace(config.model, embedding_scale=16.0))
    with caplog.at_level(logging.INFO, logger="models.artifact"):
        grown = run_training(config, "leave-last-out", tmp_path / "grown", init_from=trained(),
                             progress=False)  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("warm start ")]
    for side, spec in (("user_tower", grown.user_spec), ("item_tower", grown.item_spec)):
        old_spec = previous.user_spec if side == "user_tower" else previous.item_spec
        for name, dim in spec.dims.items():
            assert dim > old_spec.dims[name]  # every table grew ...
            copied = f"warm start {side}.{name}: "
            found = [line for line in lines if line.startswith(copied)]  # fit, then refit
            assert found and all(
                line.endswith(f" x {old_spec.dims[name]} of {dim} dims copied") for line in found
            )  # ... and kept what it had
