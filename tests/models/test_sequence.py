"""Sequence features: the history read in order by a causal encoder (models.sequence)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.artifact import load_artifact
from models.config import TrainConfig
from models.experiment import run_training
from models.features import FeatureConfigError, FeatureDef, FeatureSpec
from models.inputs import Bag, Ragged, TowerInputs
from models.sequence import padded
from models.towers import FrozenTower, Tower

from .conftest import tiny_config_for

ITEMS = 9


def spec(kind: str, encoder: str = "attention") -> FeatureSpec:
    features = [FeatureDef("user_id", "id"), FeatureDef("seq", kind, max_len=4, encoder=encoder)]
    return FeatureSpec("user", features).fit({}, ["u1", "u2", "u3"], item_vocab_size=ITEMS, high=8)


def inputs(lists: list[list[int]]) -> TowerInputs:
    bag = Ragged.from_lists([np.array(x, dtype=np.int64) for x in lists])
    rows = torch.arange(len(lists))
    return {"user_id": torch.ones(len(lists), dtype=torch.int64), "seq": bag.bags(rows)}


def tower(kind: str, encoder: str = "attention") -> Tower:
    torch.manual_seed(0)
    return Tower(spec(kind, encoder), hidden=[8], out_dim=4, item_vocab_size=ITEMS).eval()


def test_padded_lays_each_list_out_oldest_first_with_zeros_after() -> None:
    bag = Bag(torch.tensor([5, 6, 7, 8]), torch.tensor([0, 3, 3, 4]))
    tokens, lengths = padded(bag)
    assert tokens.tolist() == [[5, 6, 7], [0, 0, 0], [8, 0, 0]]
    assert lengths.tolist() == [3, 0, 1]


@pytest.mark.parametrize("encoder", ["attention", "gru"])
def test_the_order_of_the_items_changes_the_vector_of_a_sequence_not_of_a_mean(
    encoder: str,
) -> None:
    with torch.no_grad():
        seq = tower("sequence", encoder)(inputs([[1, 2, 3], [3, 2, 1]]))
        mean = tower("history")(inputs([[1, 2, 3], [3, 2, 1]]))
    assert not torch.allclose(seq[0], seq[1], atol=1e-4)
    torch.testing.assert_close(mean[0], mean[1])


@pytest.mark.parametrize("encoder", ["attention", "gru"])
def test_a_users_vector_does_not_depend_on_the_other_lists_of_its_batch(encoder: str) -> None:
    """Causal: the padding a longer list adds after a short one changes nothing."""
    model = tower("sequence", encoder)
    with torch.no_grad():
        alone = model(inputs([[4, 2]]))
        together = model(inputs([[4, 2], [1, 2, 3, 4], []]))
        empty = model(inputs([[]]))
    torch.testing.assert_close(together[0], alone[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(together[2], empty[0], atol=1e-6, rtol=0)
    assert torch.isfinite(together).all()
    torch.testing.assert_close(together.norm(dim=1), torch.ones(3))


@pytest.mark.parametrize("encoder", ["attention", "gru"])
def test_the_serving_forward_equals_the_tower(encoder: str) -> None:
    model = tower("sequence", encoder)
    batch = inputs([[1, 5, 2, 7], [3], []])
    with torch.no_grad():
        assert torch.equal(FrozenTower(model)(batch), model(batch))


def test_a_sequence_declaration_is_checked() -> None:
    with pytest.raises(FeatureConfigError, match="encoder 'lstm'"):
        FeatureDef("seq", "sequence", encoder="lstm")
    with pytest.raises(FeatureConfigError, match="blocks, heads"):
        FeatureDef("seq", "sequence", blocks=0)
    with pytest.raises(ValueError, match="3 heads do not divide dimension 8"):
        Tower(
            FeatureSpec(
                "user", [FeatureDef("user_id", "id"), FeatureDef("s", "sequence", heads=3, dim=8)]
            ).fit({}, ["u1"], item_vocab_size=ITEMS),
            hidden=[8],
            out_dim=4,
            item_vocab_size=ITEMS,
        )


def sequence_config(data_dir: Path, encoder: str) -> TrainConfig:
    config = tiny_config_for(data_dir, epochs=2, refit=False)
    features = [
        FeatureDef(f.name, "sequence", max_len=f.max_len, encoder=encoder, blocks=1)
        if f.kind == "history"
        else f
        for f in config.user_features
    ]
    return TrainConfig(config.dataset, config.data_dir, features, config.item_features,
                       config.model, config.train)  # fmt: skip


@pytest.mark.parametrize("encoder", ["attention", "gru"])
def test_a_run_with_a_sequence_feature_trains_and_round_trips(
    tiny_data_dir: Path, tmp_path: Path, encoder: str
) -> None:
    artifact = run_training(sequence_config(tiny_data_dir, encoder), "leave-last-out",
                            tmp_path / "seq", progress=False)  # fmt: skip
    losses = [row["loss"] for row in artifact.history]
    assert losses[-1] < losses[0]
    loaded = load_artifact(tmp_path / "seq")
    assert loaded.user_spec.get("history").kind == "sequence"
    for name, value in artifact.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value)
    assert any(".encoders.history." in name for name in loaded.model.state_dict())
