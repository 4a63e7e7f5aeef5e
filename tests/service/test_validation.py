"""Every limit and type rule answers 422 ``validation_error`` naming the field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.app import create_app
from service.cache import LocalEmbeddingCache
from service.settings import Limits
from tests.service.client import AppClient
from tests.service.conftest import make_settings

LIMITS = Limits(max_k=50, default_k=10, max_batch=3, max_history=4, max_exclude=4,
                max_features=3, max_list_values=2, max_string_length=16)  # fmt: skip


@pytest.fixture(scope="module")
def small(snapshots: tuple[Path, list[str]]) -> Iterator[AppClient]:
    """An app with small limits, so each one is cheap to cross."""
    app = create_app(make_settings(snapshots[0], limits=LIMITS), cache=LocalEmbeddingCache())
    with AppClient(app) as client:
        yield client


def raw(client: AppClient, text: str, url: str = "/v1/recall") -> dict:
    response = client.post(url, content=text, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == "validation_error"
    return body["error"]


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"k": 0}', "body.k"),
        ('{"k": 51}', "body.k"),
        ('{"k": NaN}', "body.k"),
        ('{"k": "5"}', "body.k"),
        ('{"k": 5.5}', "body.k"),
        ('{"features": {"age": NaN}}', "body.features.age"),
        ('{"features": {"age": Infinity}}', "body.features.age"),
        ('{"features": {"age": -Infinity}}', "body.features.age"),
        ('{"features": {"age": [1, NaN]}}', "body.features.age"),
        ('{"features": {"age": {"nested": 1}}}', "body.features.age"),
        ('{"features": {"age": true}}', "body.features.age"),
        ('{"features": {"a": 1, "b": 2, "c": 3, "d": 4}}', "body.features"),
        ('{"features": {"gender": "FFFFFFFFFFFFFFFFF"}}', "body.features.gender"),
        ('{"features": {"gender": ["F", "M", "X"]}}', "body.features.gender"),
        ('{"history": ["1", "2", "3", "4", "5"]}', "body.history"),
        ('{"history": [1]}', "body.history.0"),
        ('{"exclude_item_ids": ["1", "2", "3", "4", "5"]}', "body.exclude_item_ids"),
        ('{"user_id": "12345678901234567"}', "body.user_id"),
        ('{"user_id": ""}', "body.user_id"),
        ('{"user_id": 7}', "body.user_id"),
        ('{"exclude_seen": "yes"}', "body.exclude_seen"),
        ('{"filter": {"genres": []}}', "body.filter.genres"),
        ('{"filter": {"genres": ["Drama", "Comedy", "War"]}}', "body.filter.genres"),
        ('{"explain": 1}', "body.explain"),
        ('{"k": 5, "colour": "red"}', "body.colour"),
        ("[]", "body"),
        # what the model cannot encode: past int64, lone surrogates, past float's range
        ('{"features": {"gender": 18446744073709551616}}', "body.features.gender"),
        ('{"features": {"gender": -9223372036854775809}}', "body.features.gender"),
        ('{"features": {"gender": "\\ud800"}}', "body.features.gender"),
        ('{"features": {"gender": ["F", "\\udfff"]}}', "body.features.gender"),
        ('{"user_id": "a\\ud800"}', "body.user_id"),
        ('{"history": ["1", "\\ud800"]}', "body.history.1"),
        ('{"exclude_item_ids": ["\\udbff"]}', "body.exclude_item_ids.0"),
        ('{"filter": {"genres": ["\\ud800"]}}', "body.filter.genres.0"),
        ('{"features": {"age": 1' + "0" * 400 + "}}", "body.features.age"),
    ],
)
def test_bad_recall_request_is_422_naming_the_field(
    small: AppClient, text: str, field: str
) -> None:
    error = raw(small, text)
    assert error["message"].startswith(field + ":"), error["message"]


def test_a_feature_name_that_is_not_unicode_is_422(small: AppClient) -> None:
    error = raw(small, '{"features": {"\\ud800": "F"}}')
    assert error["message"].startswith("body.features."), error["message"]
    assert "[key]" in error["message"]


def test_malformed_json_is_422(small: AppClient) -> None:
    error = raw(small, '{"k": ')
    assert error["message"].startswith("body")


def test_batch_limits_are_422_naming_the_field(small: AppClient) -> None:
    too_many = '{"requests": [{}, {}, {}, {}]}'
    assert raw(small, too_many, "/v1/recall/batch")["message"].startswith("body.requests:")
    empty = '{"requests": []}'
    assert raw(small, empty, "/v1/recall/batch")["message"].startswith("body.requests:")
    nested = '{"requests": [{}, {"k": 0}]}'
    assert raw(small, nested, "/v1/recall/batch")["message"].startswith("body.requests.1.k:")
    extra = '{"requests": [{}], "k": 3}'
    assert raw(small, extra, "/v1/recall/batch")["message"].startswith("body.k:")


def test_similar_k_out_of_range_is_422(small: AppClient) -> None:
    for k in (0, 51, "x"):
        response = small.get("/v1/items/1/similar", params={"k": k})
        assert response.status_code == 422
        assert response.json()["error"]["message"].startswith("query.k:")


def test_default_k_comes_from_the_limits(small: AppClient) -> None:
    assert len(small.post("/v1/recall", json={"user_id": "1"}).json()["items"]) == 10
