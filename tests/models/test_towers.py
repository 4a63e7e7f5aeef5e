"""Towers: unit outputs, pooling, and dropout of ids and histories only while training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.features import FeatureDef, FeatureSpec
from models.inputs import Bag, Ragged, TowerInputs
from models.towers import Dropout, FrozenTower, Tower, pool
from models.two_tower import ModelConfig, TwoTower

ITEM_VOCAB = 6


def user_spec() -> FeatureSpec:
    features = [
        FeatureDef("user_id", "id"),
        FeatureDef("job", "categorical"),
        FeatureDef("age", "bucket", boundaries=(18.0, 30.0)),
        FeatureDef("year", "numeric"),
        FeatureDef("history", "history", max_len=4),
    ]
    columns = {"job": ["a", "b", "c"], "year": [1.0, 2.0, 3.0]}
    ids = ["u1", "u2", "u3"]
    return FeatureSpec("user", features).fit(columns, ids, item_vocab_size=ITEM_VOCAB)


def item_spec(id_name: str = "item_id") -> FeatureSpec:
    features = [FeatureDef(id_name, "id"), FeatureDef("genres", "multi_hot", max_len=3)]
    ids = [f"i{i}" for i in range(ITEM_VOCAB)]
    return FeatureSpec("item", features).fit({"genres": [["x", "y", "z"]]}, ids)


def bag(rows: list[list[int]]) -> Bag:
    """Token lists written as zero-padded rows."""
    return Ragged.from_padded(np.array(rows)).bags(torch.arange(len(rows)))


HISTORY = [[1, 2, 0, 0], [6, 0, 0, 0], [0, 0, 0, 0], [3, 4, 5, 6]]


def user_batch(history: list[list[int]] = HISTORY) -> TowerInputs:
    return {
        "user_id": torch.tensor([1, 2, 3, 0]),
        "job": torch.tensor([1, 2, 0, 3]),
        "age": torch.tensor([1, 2, 3, 0]),
        "year": torch.tensor([[0.5, 0.0], [-1.0, 0.0], [0.0, 1.0], [2.0, 0.0]]),
        "history": bag(history),
    }


def one_user(batch: TowerInputs, row: int) -> TowerInputs:
    out: TowerInputs = {}
    for name, value in batch.items():
        if isinstance(value, Bag):
            a, b = value.offsets[row : row + 2].tolist()
            out[name] = Bag(value.tokens[a:b], torch.tensor([0, b - a]))
        else:
            out[name] = value[row : row + 1]
    return out


def tower(**kwargs: float) -> Tower:
    torch.manual_seed(0)
    return Tower(user_spec(), [16], 8, item_vocab_size=ITEM_VOCAB, **kwargs)


def test_tower_outputs_unit_vectors_of_the_output_size() -> None:
    vectors = tower().eval()(user_batch())
    assert vectors.shape == (4, 8)
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(4))


def test_history_is_the_mean_of_its_non_padding_embeddings() -> None:
    model = tower().eval()
    table = model.embeddings["history"].weight
    batch = user_batch()
    before = model(batch)
    with torch.no_grad():
        table[0] = 100.0  # the padding row never enters the mean
        table[5] = (table[1] + table[2]) / 2  # token 5 alone embeds as the mean of 1 and 2
    torch.testing.assert_close(model(batch)[[0, 1, 2]], before[[0, 1, 2]])
    alone = user_batch([[5, 0, 0, 0], [0, 0, 6, 0], [0, 0, 0, 0], [4, 3, 6, 5]])
    torch.testing.assert_close(model(alone)[0], model(batch)[0])
    # The same tokens in another order: the same vector.
    torch.testing.assert_close(model(alone)[[1, 3]], model(batch)[[1, 3]])


def test_id_dropout_replaces_ids_with_the_unknown_row_only_in_training_mode() -> None:
    model = tower(id_dropout=1.0)
    no_ids = user_batch()
    no_ids["user_id"] = torch.zeros(4, dtype=torch.int64)
    expected_unknown = model.eval()(no_ids)
    evaluated = model(user_batch())
    assert not torch.allclose(evaluated[:3], expected_unknown[:3])
    torch.testing.assert_close(model.train()(user_batch()), expected_unknown)


def test_history_dropout_blanks_whole_histories_only_in_training_mode() -> None:
    model = tower(history_dropout=1.0)
    no_history = user_batch([[0] * 4] * 4)
    expected_blank = model.eval()(no_history)
    assert not torch.allclose(model(user_batch())[[0, 1, 3]], expected_blank[[0, 1, 3]])
    torch.testing.assert_close(model.train()(user_batch()), expected_blank)


def test_zero_dropout_training_mode_equals_evaluation_mode() -> None:
    model = tower()
    torch.testing.assert_close(model.train()(user_batch()), model.eval()(user_batch()))


def test_score_is_the_cosine_divided_by_the_temperature() -> None:
    torch.manual_seed(0)
    model = TwoTower(ModelConfig(hidden=[8], dim=4, temperature=0.1), user_spec(), item_spec())
    users = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    items = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    expected = torch.tensor([[float(u @ i) / 0.1 for i in items] for u in users])
    torch.testing.assert_close(model.score(users, items), expected)


@pytest.mark.parametrize("id_name", ["item_id", "movie_id"])
def test_history_table_has_a_row_per_item_id_whatever_the_id_feature_is_named(
    id_name: str,
) -> None:
    model = TwoTower(ModelConfig(hidden=[8], dim=4), user_spec(), item_spec(id_name))
    assert model.user_tower.embeddings["history"].num_embeddings == ITEM_VOCAB + 1
    vectors = model.eval().user_vectors(user_batch())  # token 6 is the last item row
    assert vectors.shape == (4, 4)


@pytest.mark.parametrize("hidden", [[16], [16, 12], []])
def test_frozen_tower_gives_bit_identical_vectors(hidden: list[int]) -> None:
    torch.manual_seed(0)
    model = Tower(user_spec(), hidden, 8, dropout=0.3, item_vocab_size=ITEM_VOCAB).eval()
    frozen = FrozenTower(model)
    batch = user_batch()
    with torch.inference_mode():
        assert torch.equal(frozen(batch), model(batch))
        one = one_user(batch, 3)
        assert torch.equal(frozen(one), model(one))


def test_frozen_tower_shares_the_weights() -> None:
    model = tower().eval()
    frozen = FrozenTower(model)
    with torch.no_grad():
        model.mlp[-1].weight.mul_(-1.0)
    assert torch.equal(frozen(user_batch()), model(user_batch()))


def test_frozen_tower_refuses_layers_it_does_not_know() -> None:
    model = tower()
    model.mlp.append(torch.nn.ReLU())
    with pytest.raises(TypeError, match="ReLU"):
        FrozenTower(model)


def test_pooled_gradient_equals_embedding_bags_own() -> None:
    torch.manual_seed(0)
    weight = torch.randn(9, 5, requires_grad=True)
    lists = bag([[1, 2, 2, 0], [0, 0, 0, 0], [8, 3, 1, 7], [4, 0, 0, 0]])
    upstream = torch.randn(4, 5)
    pool(lists, weight).backward(upstream)
    ours, weight.grad = weight.grad, None
    F.embedding_bag(
        lists.tokens, weight, lists.offsets, mode="mean", include_last_offset=True
    ).backward(upstream)
    torch.testing.assert_close(ours, weight.grad)


def test_dropout_zeroes_about_p_and_keeps_the_expectation() -> None:
    layer = Dropout(0.25, np.random.default_rng(0)).train()
    x = torch.ones(400, 500)
    out = layer(x)
    dropped = float((out == 0).float().mean())
    assert dropped == pytest.approx(0.25, abs=0.01)
    assert float(out.mean()) == pytest.approx(1.0, abs=0.01)
    assert torch.unique(out).tolist() == [0.0, pytest.approx(65536 / (65536 - 16384))]
    assert torch.equal(layer.eval()(x), x)
    first, second = Dropout(0.5, np.random.default_rng(3)), Dropout(0.5, np.random.default_rng(3))
    assert torch.equal(first(x), second(x))  # the stream decides the mask


def test_tiny_categorical_and_bucket_features_are_one_hot_and_stay_fixed() -> None:
    """Under ``one_hot_max`` a feature's rows are unit vectors that training never changes."""
    features = [
        FeatureDef("user_id", "id"),
        FeatureDef("gender", "categorical"),  # 2 values + unknown: 3 rows
        FeatureDef("job", "categorical"),  # 5 values + unknown: 6 rows
        FeatureDef("age", "bucket", boundaries=(18.0,)),  # 3 rows
        FeatureDef("sized", "categorical", dim=7),  # a declared size is kept
    ]
    columns = {"gender": ["M", "F"], "job": list("abcde"), "sized": ["x", "y"]}
    spec = FeatureSpec("user", features).fit(columns, ["u1", "u2"], one_hot_max=4)
    assert spec.one_hot == ["gender", "age"]
    assert (spec.dims["gender"], spec.dims["age"], spec.dims["sized"]) == (3, 3, 7)
    assert spec.dims["job"] != 6 and FeatureSpec.from_json(spec.to_json()).one_hot == spec.one_hot

    tower = Tower(spec, hidden=[8], out_dim=4)
    for name in ("gender", "age"):
        assert torch.equal(tower.embeddings[name].weight, torch.eye(3))
    before = {name: p.detach().clone() for name, p in tower.named_parameters()}
    inputs: TowerInputs = {
        "user_id": torch.tensor([1, 2]),
        "gender": torch.tensor([1, 2]),
        "job": torch.tensor([3, 0]),
        "age": torch.tensor([2, 1]),
        "sized": torch.tensor([1, 2]),
    }
    optimiser = torch.optim.Adam(tower.parameters(), lr=0.1)
    tower(inputs).sum().backward()
    optimiser.step()
    after = dict(tower.named_parameters())
    for name in ("embeddings.gender.weight", "embeddings.age.weight"):
        assert torch.equal(after[name], before[name])
    assert not torch.equal(after["embeddings.job.weight"], before["embeddings.job.weight"])


def test_no_feature_is_one_hot_by_default() -> None:
    assert user_spec().one_hot == []
