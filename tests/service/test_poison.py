"""A request the model cannot encode is refused alone: the valid requests answered in the same
event-loop pass are answered as if it had not been sent."""

from __future__ import annotations

import json

from tests.service.client import AppClient

POISON = [
    '{"features": {"gender": 18446744073709551616}}',  # past 64 bits
    '{"features": {"gender": "\\ud800"}}',  # a lone surrogate
    '{"features": {"age": 1' + "0" * 400 + "}}",  # past float's range
]


def test_poison_requests_get_422_and_the_innocent_ones_of_the_same_pass_200(
    client: AppClient,
) -> None:
    innocent = [json.dumps({"user_id": str(u), "k": 5}).encode() for u in range(1, 31)]
    bodies = innocent[:10] + [p.encode() for p in POISON] + innocent[10:]
    responses = client.post_together("/v1/recall", bodies)
    statuses = [r.status_code for r in responses]
    assert statuses[10:13] == [422, 422, 422]
    assert statuses[:10] + statuses[13:] == [200] * 30
    alone = [client.post("/v1/recall", content=b, headers={"Content-Type": "application/json"})
             for b in innocent]  # fmt: skip
    together = responses[:10] + responses[13:]
    for one, shared in zip(alone, together, strict=True):
        assert [i["item_id"] for i in one.json()["items"]] == [
            i["item_id"] for i in shared.json()["items"]
        ]


def test_poison_requests_inside_a_batch_name_their_position(client: AppClient) -> None:
    body = '{"requests": [{"user_id": "1"}, ' + POISON[0] + "]}"
    response = client.post(
        "/v1/recall/batch", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith("body.requests.1.features.gender")
