"""The hot routes' fast path answers what FastAPI's routes would, and hands them the rest."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from index_builder.snapshot import LoadedSnapshot
from service.app import create_app
from service.batcher import RecallBatcher
from service.cache import LocalEmbeddingCache
from service.fastpath import PARSE_CHARS, RecallFastPath, batch_elements
from service.schemas import request_schemas
from service.settings import Limits
from tests.service.client import AppClient
from tests.service.conftest import make_settings


def fast_path(**limits: Any) -> RecallFastPath:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:  # never called here
        raise AssertionError("unexpected call")

    route: Any = None
    return RecallFastPath(app, Any, route, route, Limits(**limits), Any, route)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("query", "k"),
    [
        (b"", 100),
        (b"k=5", 5),
        (b"k=1000", 1000),
        (b"k=%35", 5),  # percent-decoded, as FastAPI reads it
        (b"k=0", None),
        (b"k=1001", None),
        (b"k=-1", None),
        (b"k=5.0", None),
        (b"k=", None),
        (b"k=5&k=6", None),
        (b"k=5&debug=1", None),
        (b"limit=5", None),
        (b"k=99999999999999999999", None),
        (b"k=\xff", None),
    ],
)
def test_k_is_taken_only_when_plain_and_in_range(query: bytes, k: int | None) -> None:
    """Anything but one plain in-range ``k`` is left to FastAPI (None)."""
    assert fast_path(max_k=1000, default_k=100)._k(query) == k


def without_timing(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != "took_ms"}


def test_similar_fast_and_routed_answers_are_the_same(
    client: AppClient, newest: LoadedSnapshot
) -> None:
    item = newest.item_ids[3]
    fast = client.get(f"/v1/items/{item}/similar?k=7")
    routed = client.get(f"/v1/items/{item}/similar?k=7&trace=1")  # extra parameter: FastAPI
    assert fast.status_code == routed.status_code == 200
    assert without_timing(fast.json()) == without_timing(routed.json())
    assert len(fast.json()["items"]) == 7
    assert fast.headers["content-type"] == routed.headers["content-type"]


def test_similar_fast_path_errors_keep_the_routes_shape(client: AppClient) -> None:
    missing = client.get("/v1/items/no-such-item/similar?k=3")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    bad = client.get("/v1/items/1/similar?k=3.5")
    assert bad.status_code == 422
    assert bad.json()["error"]["message"].startswith("query.k:")
    nested = client.get("/v1/items/a/b/similar")
    assert nested.status_code == 404


def test_fast_path_requests_are_counted_under_their_route(
    client: AppClient, newest: LoadedSnapshot
) -> None:
    assert client.get(f"/v1/items/{newest.item_ids[0]}/similar?k=2").status_code == 200
    assert client.post("/v1/recall", json={"k": 2}).status_code == 200
    text = client.get("/metrics").text
    assert 'route="/v1/items/{item_id}/similar",status="200"' in text
    assert 'route="/v1/recall",status="200"' in text


def test_requests_that_fall_through_are_counted_once(client: AppClient) -> None:
    assert client.post("/v1/recall", json={"k": 0}).status_code == 422  # FastAPI answers
    assert client.get("/v1/items/1/similar?k=x").status_code == 422
    text = client.get("/metrics").text
    for labels in (
        'method="POST",route="/v1/recall",status="422"',
        'method="GET",route="/v1/items/{item_id}/similar",status="422"',
    ):
        assert f"recall_http_request_duration_seconds_count{{{labels}}} 1.0" in text
    assert "recall_http_requests_in_flight 1.0" in text  # the /metrics request itself


def test_an_unexpected_error_on_the_fast_path_is_500_internal(
    snapshots: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(make_settings(snapshots[0]), cache=LocalEmbeddingCache())

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(RecallBatcher, "recall", broken)
    with AppClient(app) as client:
        response = client.post("/v1/recall", json={"k": 3})
        text = client.get("/metrics").text
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal"
    assert 'route="/v1/recall",status="500"' in text


def test_batch_elements_are_the_requests_one_by_one() -> None:
    text = '{"requests": [{"k": 1}, {"history": ["a", "b"]}]}'
    elements = list(batch_elements(text))
    assert [element for element, _ in elements] == [{"k": 1}, {"history": ["a", "b"]}]
    assert [text[end - 1] for _, end in elements] == ["}", "}"]  # each ends after its element
    assert list(batch_elements(' {"requests": [ ] } ')) == []


@pytest.mark.parametrize(
    "text",
    ['{"requests": [1],}', '{"requests": [1]} x', '{"other": 1}', "[1]", '{"requests": [1 2]}',
     '{"requests": [1], "requests": [2]}', '{"requests": [1]'],
)  # fmt: skip
def test_batch_elements_refuse_any_other_document(text: str) -> None:
    with pytest.raises(ValueError):
        list(batch_elements(text))


def test_a_big_batch_is_parsed_with_the_loop_running_in_between() -> None:
    """While a 64-request batch of 1,000 exclusions each (~650 kB) is parsed and validated,
    other tasks run: the fast path yields every PARSE_CHARS characters."""
    limits = Limits()
    schema, batch_schema = request_schemas(limits)
    route: Any = None
    path = RecallFastPath(route, schema, route, route, limits, batch_schema, route)
    requests = [{"user_id": str(u), "k": 1000, "exclude_item_ids": [str(i) for i in range(1000)]}
                for u in range(64)]  # fmt: skip
    body = json.dumps({"requests": requests}).encode()
    assert len(body) > 10 * PARSE_CHARS
    ticks: list[int] = []

    async def ticker(done: asyncio.Event) -> None:
        while not done.is_set():
            ticks.append(len(ticks))
            await asyncio.sleep(0)

    async def run() -> Any:
        done = asyncio.Event()
        task = asyncio.create_task(ticker(done))
        await asyncio.sleep(0)
        started = len(ticks)
        batch = await path._batch(body)
        parsed_during = len(ticks) - started
        done.set()
        await task
        return batch, parsed_during

    batch, ticks_during = asyncio.run(run())
    assert [r.user_id for r in batch.requests] == [str(u) for u in range(64)]
    assert all(len(r.exclude_item_ids) == 1000 for r in batch.requests)
    assert ticks_during >= len(body) // PARSE_CHARS - 1
