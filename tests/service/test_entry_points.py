"""Both entry points of POST /v1/recall (the fast path and FastAPI's route) run the same
pipeline, and every answer matches the declared response schema."""

from __future__ import annotations

import json

import pytest

from service.schemas import BatchRecallResponse, RecallResponse, SimilarResponse
from tests.service.client import AppClient

FAST = {"Content-Type": "application/json"}
ROUTE = {"Content-Type": "application/vnd.recall+json"}  # JSON to FastAPI, not to the fast path

BODIES = [
    {"user_id": "1", "k": 5},
    {"user_id": "2", "k": 7, "explain": True, "exclude_item_ids": ["1", "2"]},
    {"features": {"age": 30, "gender": "F"}, "history": ["3", "4"], "k": 4},
    {"k": 3},  # popularity fallback
]


def post(client: AppClient, body: object, headers: dict[str, str]) -> tuple[int, dict]:
    response = client.post("/v1/recall", content=json.dumps(body), headers=headers)
    return response.status_code, response.json()


@pytest.mark.parametrize("body", BODIES)
def test_fast_path_and_route_give_the_same_answer(client: AppClient, body: dict) -> None:
    fast_status, fast = post(client, body, FAST)
    route_status, route = post(client, body, ROUTE)
    assert fast_status == route_status == 200
    for answer in (fast, route):
        answer.pop("took_ms")
        answer["user"].pop("source")  # the second one may come from the cache
        RecallResponse.model_validate({**answer, "took_ms": 0.0, "user": {**answer["user"],
                                       "source": "cache"}})  # fmt: skip
    assert fast == route


@pytest.mark.parametrize(
    "body",
    [
        {"k": 0},
        {"features": {"gender": 1 << 70}},
        {"features": {"shoe_size": 3}},
        {"filter": {"colour": ["red"]}},
    ],  # fmt: skip
)
def test_fast_path_and_route_refuse_alike(client: AppClient, body: dict) -> None:
    fast_status, fast = post(client, body, FAST)
    route_status, route = post(client, body, ROUTE)
    assert fast_status == route_status and fast_status == 422
    assert fast == route


def test_every_answer_matches_its_response_schema(client: AppClient) -> None:
    batch = client.post("/v1/recall/batch", json={"requests": BODIES})
    assert batch.status_code == 200
    BatchRecallResponse.model_validate(batch.json())
    for body in BODIES:
        RecallResponse.model_validate(client.post("/v1/recall", json=body).json())
    similar = client.get("/v1/items/1/similar?k=3")
    SimilarResponse.model_validate(similar.json())


def batch_on_both(client: AppClient, text: str) -> tuple[dict, dict] | None:
    """POST ``text`` to the batch route's fast path and to FastAPI's route: the same status,
    the same error body; the two 200 answers, or None for an error."""
    fast = client.post("/v1/recall/batch", content=text, headers=FAST)
    route = client.post("/v1/recall/batch", content=text, headers=ROUTE)
    assert fast.status_code == route.status_code
    if fast.status_code != 200:
        assert fast.json() == route.json()
        return None
    return fast.json(), route.json()


@pytest.mark.parametrize(
    "body",
    [
        {"requests": BODIES},
        {"requests": []},
        {"requests": [{"k": 0}]},
        {"requests": [{"user_id": "1"}, {"features": {"gender": "\ud800"}}]},
        {"requests": [{"user_id": "1"}, {"features": {"shoe_size": 1}}]},
    ],  # fmt: skip
)
def test_batch_fast_path_and_route_agree(client: AppClient, body: dict) -> None:
    answers = batch_on_both(client, json.dumps(body))
    if answers is None:
        return
    for answer in answers:
        BatchRecallResponse.model_validate(answer)
    fast, route = ([{k: v for k, v in r.items() if k not in ("took_ms", "user")}
                    for r in answer["results"]] for answer in answers)  # fmt: skip
    assert fast == route


@pytest.mark.parametrize(
    "text",
    [
        ' \n{ "requests" :\t[ {"user_id": "1", "k": 3} , {"k": 2} ] }\r\n',  # JSON's whitespace
        '{"requests": [{"user_id": "1"}], "requests": [{"k": 2}]}',  # a repeated key
        '{"requests": [{"user_id": "1"}], "extra": 1}',  # a key the schema forbids
        '{"requests": [{"user_id": "1"}]} []',  # data after the document
        '{"requests": [{"user_id": "1"},]}',  # a trailing comma
        '{"requests": [{"user_id": "1"} {"k": 2}]}',  # a missing comma
        '{"requests": [{"k": NaN}]}',  # a constant json.loads takes
        '{"requests": {"k": 2}}',  # not a list
        '["requests"]',
        '{"requests": [' + ", ".join(['{"k": 1}'] * 65) + "]}",  # past max_batch (64)
    ],
)
def test_batch_texts_parse_alike_on_both_entry_points(client: AppClient, text: str) -> None:
    """The fast path parses a batch one request at a time; whatever the text, it answers what
    FastAPI's route (which parses it whole) answers."""
    answers = batch_on_both(client, text)
    if answers is None:
        return
    fast, route = ([len(r["items"]) for r in answer["results"]] for answer in answers)
    assert fast == route
