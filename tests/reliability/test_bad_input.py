"""Bad input gets a 4xx naming the field, never a 5xx: schemathesis over the OpenAPI spec, and
hand-written oversized, non-finite and unknown inputs."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode

from tests.reliability.conftest import ADMIN, Server, module_server

pytestmark = pytest.mark.slow
EXAMPLES = 40  # per operation and generation mode; derandomized, so every run sends the same


server = module_server("bad-input")


def test_schemathesis_finds_no_server_error(server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    errors: list[str] = []
    calls = 0
    settings = hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )

    def call(case: schemathesis.Case) -> None:
        nonlocal calls
        calls += 1
        response = case.call(base_url=server.url, headers=ADMIN, timeout=30)
        if response.status_code >= 500:
            errors.append(f"{case.operation.label} {case.body!r}: {response.text[:300]}")

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            test = settings(
                hypothesis.given(case=operation.as_strategy(generation_mode=mode))(call)
            )
            # an operation without parameters has nothing invalid to send
            with contextlib.suppress(hypothesis.errors.Unsatisfiable):
                test()
    assert calls > 200
    assert errors == []


def post(server: Server, body: bytes, path: str = "/v1/recall") -> httpx.Response:
    headers = {"content-type": "application/json"}
    return httpx.post(f"{server.url}{path}", content=body, headers=headers, timeout=30)


def error(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()["error"]
    return response.status_code, body["code"], body["message"]


def test_a_body_over_one_mib_is_413_before_it_is_read(server: Server) -> None:
    big = json.dumps({"user_id": "1", "history": ["x"] * 300_000}).encode()
    assert len(big) > 1 << 20
    status, code, message = error(post(server, big))
    assert (status, code) == (413, "payload_too_large")
    assert "RECALL_LIMITS__MAX_BODY_BYTES" in message

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for start in range(0, len(big), 65_536):
            yield big[start : start + 65_536]

    response = httpx.post(f"{server.url}/v1/recall", content=chunks(), timeout=30,
                          headers={"content-type": "application/json"})  # fmt: skip
    assert error(response)[:2] == (413, "payload_too_large")
    assert httpx.get(f"{server.url}/healthz").status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"user_id": "1", "history": ' + json.dumps(["1"] * 501).encode() + b"}", "body.history"),
        (b'{"exclude_item_ids": ' + json.dumps(["1"] * 1001).encode() + b"}", "exclude_item_ids"),
        (b'{"requests": ' + json.dumps([{}] * 65).encode() + b"}", "body.requests"),
        (b'{"user_id": "' + b"u" * 300 + b'"}', "body.user_id"),
        (b'{"k": 100000}', "body.k"),
        (b'{"features": {"age": NaN}}', "body.features.age"),
        (b'{"features": {"age": Infinity}}', "body.features.age"),
        (b'{"features": {"age": -Infinity}}', "body.features.age"),
        (b'{"features": {"age": 1e999}}', "body.features.age"),
        (b'{"features": {"age": [1, NaN]}}', "body.features.age"),
        (b'{"k": NaN}', "body.k"),
        (b'{"user_id": "1", "colour": "red"}', "body.colour"),
        (b'{"filter": {"genres": ["Comedy"]}, "limit": 3}', "body.limit"),
        (b'{"user_id": 1}', "body.user_id"),
        (b'{"user_id": "1"', "body"),
        (b"[]", "body"),
    ],
)
def test_bad_bodies_get_4xx_naming_the_field(server: Server, body: bytes, field: str) -> None:
    path = "/v1/recall/batch" if body.startswith(b'{"requests"') else "/v1/recall"
    status, code, message = error(post(server, body, path))
    assert 400 <= status < 500 and code == "validation_error"
    assert field in message


def test_unknown_feature_and_filter_names_are_422_naming_them(server: Server) -> None:
    status, code, message = error(post(server, b'{"features": {"shoe_size": 44}}'))
    assert (status, code) == (422, "unknown_feature") and "features.shoe_size" in message
    status, code, message = error(post(server, b'{"filter": {"colour": ["red"]}}'))
    assert (status, code) == (422, "unknown_filter") and "filter.colour" in message
    batch = b'{"requests": [{}, {"features": {"shoe_size": 1}}]}'
    status, code, message = error(post(server, batch, "/v1/recall/batch"))
    assert (status, code) == (422, "unknown_feature") and "requests.1.features" in message
