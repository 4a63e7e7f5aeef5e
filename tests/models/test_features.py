"""Feature encoders against hand-computed vocabularies, z-scores and bucket rows."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pytest

from models.features import (
    UNKNOWN,
    FeatureConfigError,
    FeatureDef,
    FeatureSpec,
    auto_dim,
    encode_lists,
)


def fitted(
    *features: FeatureDef, columns: dict | None = None, ids: Sequence[str] = ()
) -> FeatureSpec:
    return FeatureSpec("user", list(features)).fit(columns or {}, ids_seen=ids)


def test_categorical_vocabulary_orders_by_frequency_then_first_appearance() -> None:
    # Counts: b=3, a=1, c=1 -> b first; a and c tie, a appeared first. "" is never a value.
    spec = fitted(FeatureDef("job", "categorical"), columns={"job": ["a", "b", "c", "b", "", "b"]})
    assert spec.vocabs["job"] == {"b": 1, "a": 2, "c": 3}


def test_unseen_and_missing_categorical_values_encode_to_the_unknown_row() -> None:
    spec = fitted(FeatureDef("job", "categorical"), columns={"job": ["a", "b"]})
    encoded = spec.encode({"job": ["b", "zzz", None, "", "a"]}, 5)["job"]
    np.testing.assert_array_equal(encoded, [2, UNKNOWN, UNKNOWN, UNKNOWN, 1])
    assert encoded.dtype == np.int64


def test_a_column_absent_from_the_table_encodes_every_entity_as_unknown() -> None:
    spec = fitted(FeatureDef("job", "categorical"), columns={"job": ["a"]})
    np.testing.assert_array_equal(spec.encode({}, 3)["job"], [UNKNOWN] * 3)


def test_categorical_prefix_keeps_only_the_first_characters_of_the_source_field() -> None:
    zip_prefix = FeatureDef("zip_prefix", "categorical", field="zip_code", prefix=2)
    spec = fitted(zip_prefix, columns={"zip_code": ["85711", "85000", "94043", "9"]})
    assert spec.vocabs["zip_prefix"] == {"85": 1, "94": 2, "9": 3}
    encoded = spec.encode({"zip_code": ["85999", "94", "12345"]}, 3)["zip_prefix"]
    np.testing.assert_array_equal(encoded, [1, 2, UNKNOWN])


def test_id_feature_has_rows_only_for_ids_seen_in_training() -> None:
    spec = fitted(FeatureDef("user_id", "id"), ids=["u2", "u1", "u2"])
    assert spec.vocabs["user_id"] == {"u2": 1, "u1": 2}
    encoded = spec.encode({"user_id": ["u1", "u3", "u2"]}, 3)["user_id"]
    np.testing.assert_array_equal(encoded, [2, UNKNOWN, 1])


def test_multi_hot_drops_unknown_tokens_pads_with_zero_and_keeps_the_last_max_len() -> None:
    genres = FeatureDef("genres", "multi_hot", field="class", max_len=3)
    # Token counts: Drama 3, Action 2, Comedy 1 -> rows 1, 2, 3.
    train = [["Drama", "Action"], ["Drama"], ["Comedy", "Action", "Drama"]]
    spec = fitted(genres, columns={"class": train})
    assert spec.vocabs["genres"] == {"Drama": 1, "Action": 2, "Comedy": 3}
    rows = [["Action"], "Comedy Horror Drama", ["Comedy", "Action", "Drama", "Action"], None]
    encoded = spec.encode({"class": rows}, 4)["genres"]
    expected = [[2, 0, 0], [3, 1, 0], [2, 1, 2], [0, 0, 0]]  # Horror is unknown: dropped
    np.testing.assert_array_equal(encoded, expected)


def test_encode_lists_left_aligns_and_keeps_the_latest_values() -> None:
    packed = encode_lists([[5, 0, 6, 7, 8], [], [9]], 3, max_len=3)
    np.testing.assert_array_equal(packed, [[6, 7, 8], [0, 0, 0], [9, 0, 0]])


def test_numeric_zscore_uses_mean_and_population_std_of_the_finite_values() -> None:
    # Finite values 1, 2, 3, 6: mean 3, variance (4 + 1 + 0 + 9) / 4 = 3.5.
    spec = fitted(FeatureDef("year", "numeric"), columns={"year": ["1", 2, "3", "6", "x", None]})
    mean, std = spec.stats["year"]
    assert (mean, std) == pytest.approx((3.0, math.sqrt(3.5)))
    encoded = spec.encode({"year": ["6", "", float("inf"), 3]}, 4)["year"]
    assert encoded.dtype == np.float32 and encoded.shape == (4, 2)
    # Missing (unparsable or infinite) values encode as 0 with the missing flag set.
    expected = [[3 / math.sqrt(3.5), 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.0]]
    np.testing.assert_allclose(encoded, expected, rtol=1e-6)


def test_numeric_log_transform_applies_log1p_before_the_zscore() -> None:
    # log1p of 0, e - 1, e^2 - 1 is 0, 1, 2: mean 1, population std sqrt(2/3).
    values = [0.0, math.e - 1, math.e**2 - 1]
    spec = fitted(FeatureDef("count", "numeric", transform="log"), columns={"count": values})
    assert spec.stats["count"] == pytest.approx((1.0, math.sqrt(2 / 3)))
    encoded = spec.encode({"count": [math.e**2 - 1, -5.0]}, 2)["count"]
    # log1p is undefined at or below -1: such a value counts as missing.
    np.testing.assert_allclose(encoded, [[1 / math.sqrt(2 / 3), 0.0], [0.0, 1.0]], rtol=1e-6)


def test_constant_numeric_column_keeps_unit_std_instead_of_dividing_by_zero() -> None:
    spec = fitted(FeatureDef("year", "numeric"), columns={"year": [7, 7, 7]})
    assert spec.stats["year"] == (7.0, 1.0)
    np.testing.assert_array_equal(spec.encode({"year": [9]}, 1)["year"], [[2.0, 0.0]])


def test_bucket_edges_are_upper_exclusive_and_missing_values_are_unknown() -> None:
    # Boundaries [18, 25]: row 1 is (-inf, 18), row 2 [18, 25), row 3 [25, inf); 0 unknown.
    spec = fitted(FeatureDef("age", "bucket", boundaries=(18, 25)))
    ages = [-3, 17.9, 18, "24.99", 25, 1000, None, "n/a"]
    np.testing.assert_array_equal(spec.encode({"age": ages}, 8)["age"], [1, 1, 2, 2, 3, 3, 0, 0])
    assert spec.cardinality(spec.get("age")) == 4


def test_auto_dim_is_eight_times_the_fourth_root_clamped() -> None:
    assert [auto_dim(c) for c in (0, 1, 2, 16, 81, 10_000)] == [8, 8, 10, 16, 24, 64]
    assert auto_dim(16, scale=1.0) == 4  # 2 is below the floor of 4
    assert auto_dim(10_000, high=32) == 32


def test_fit_sizes_each_table_from_its_cardinality_unless_a_dim_is_given() -> None:
    spec = FeatureSpec(
        "user",
        [
            FeatureDef("user_id", "id"),
            FeatureDef("job", "categorical", dim=5),
            FeatureDef("age", "bucket", boundaries=(18, 25)),
            FeatureDef("history", "history"),
            FeatureDef("year", "numeric"),
        ],
    ).fit({"job": ["a", "b"]}, ids_seen=[f"u{i}" for i in range(80)], item_vocab_size=15)
    # Cardinalities (row 0 included): user_id 81 -> 24; age 4 -> round(11.3) = 11; history
    # 15 + 1 = 16 -> 16. Numeric features have no table.
    assert spec.dims == {"user_id": 24, "job": 5, "age": 11, "history": 16}


def test_history_is_not_encoded_from_table_columns() -> None:
    spec = fitted(FeatureDef("user_id", "id"), FeatureDef("history", "history"), ids=["u1"])
    assert set(spec.encode({"user_id": ["u1"]}, 1)) == {"user_id"}


def test_encode_values_encodes_one_entity_with_a_leading_batch_axis() -> None:
    spec = fitted(
        FeatureDef("job", "categorical"),
        FeatureDef("genres", "multi_hot", max_len=2),
        FeatureDef("year", "numeric"),
        FeatureDef("age", "bucket", boundaries=(18,)),
        columns={"job": ["a"], "genres": [["x", "y"]], "year": [1, 3]},
    )
    encoded = spec.encode_values({"job": "a", "genres": ["y", "q"], "year": None, "age": 18})
    np.testing.assert_array_equal(encoded["job"], [1])
    np.testing.assert_array_equal(encoded["genres"], [[2, 0]])
    np.testing.assert_array_equal(encoded["year"], [[0.0, 1.0]])
    np.testing.assert_array_equal(encoded["age"], [2])
    assert set(spec.encode_values({"job": "zzz"})) == {"job"}


def test_encode_values_names_unknown_features_and_the_declared_ones() -> None:
    spec = fitted(FeatureDef("job", "categorical"), columns={"job": ["a"]})
    with pytest.raises(KeyError, match=r"unknown user features \['salary'\]; declared: \['job'\]"):
        spec.encode_values({"job": "a", "salary": 3})


def test_spec_survives_a_json_round_trip_and_encodes_identically() -> None:
    features = [
        FeatureDef("user_id", "id"),
        FeatureDef("zip", "categorical", field="zip_code", prefix=2),
        FeatureDef("genres", "multi_hot", max_len=3),
        FeatureDef("year", "numeric", transform="log"),
        FeatureDef("age", "bucket", boundaries=(18.0, 25.5)),
        FeatureDef("history", "history", max_len=7),
    ]
    columns = {
        "zip_code": ["85711", "94043", "85000"],
        "genres": [["a", "b"], ["b"], []],
        "year": [1.0, 10.0, 100.0],
        "age": [10, 20, 30],
    }
    spec = FeatureSpec("user", features).fit(columns, ids_seen=["u1", "u2"], item_vocab_size=9)
    again = FeatureSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again == spec
    columns["user_id"] = ["u2", "u9", "u1"]
    for name, values in spec.encode(columns, 3).items():
        np.testing.assert_array_equal(again.encode(columns, 3)[name], values)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "f", "kind": "embedding"}, "kind 'embedding' not in"),
        ({"name": "f", "kind": "bucket", "boundaries": [3, 1]}, "boundaries must be sorted"),
        ({"name": "f", "kind": "numeric", "transform": "sqrt"}, "transform must be zscore or log"),
        ({"name": "f", "kind": "id", "vocab_size": 3}, r"unknown keys \['vocab_size'\]"),
    ],
)
def test_feature_def_rejects_an_unusable_declaration_naming_the_feature(
    raw: dict, message: str
) -> None:
    with pytest.raises(FeatureConfigError, match=f"feature 'f'.*{message}"):
        FeatureDef.from_dict(raw)
