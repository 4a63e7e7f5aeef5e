"""RECALL_API_KEYS guards both /v1 entry points (the fast path and FastAPI's routes); health,
metrics and admin keep their own rules. RECALL_DOCS=false removes the API docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.app import create_app
from service.cache import LocalEmbeddingCache
from tests.service.client import AppClient
from tests.service.conftest import make_settings

KEYS = "first-key-0123456789,second-key-0123456789"


@pytest.fixture
def keyed(snapshots: tuple[Path, list[str]]) -> AppClient:
    app = create_app(make_settings(snapshots[0], api_keys=KEYS), cache=LocalEmbeddingCache())
    return AppClient(app)


CALLS = [
    ("POST", "/v1/recall", {"user_id": "1", "k": 3}),  # fast path
    ("POST", "/v1/recall", {"user_id": "1", "k": 0}),  # FastAPI's route (422 there)
    ("POST", "/v1/recall/batch", {"requests": [{"user_id": "1", "k": 3}]}),
    ("GET", "/v1/items/1/similar?k=3", None),
]


@pytest.mark.parametrize(("method", "url", "body"), CALLS)
def test_v1_needs_a_configured_key(
    keyed: AppClient, method: str, url: str, body: dict | None
) -> None:
    with keyed as client:
        missing = client.request(method, url, json=body)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
        wrong = client.request(method, url, json=body, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden"
        for headers in ({"X-API-Key": "second-key-0123456789"},
                        {"Authorization": "Bearer first-key-0123456789"}):  # fmt: skip
            ok = client.request(method, url, json=body, headers=headers)
            assert ok.status_code in (200, 422), ok.text


def test_health_and_metrics_need_no_key(keyed: AppClient) -> None:
    with keyed as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200


def test_docs_can_be_turned_off(snapshots: tuple[Path, list[str]]) -> None:
    app = create_app(make_settings(snapshots[0], docs=False), cache=LocalEmbeddingCache())
    with AppClient(app) as client:
        for url in ("/docs", "/redoc", "/openapi.json"):
            assert client.get(url).status_code == 404
        assert client.post("/v1/recall", json={"user_id": "1"}).status_code == 200
