"""One error body for every error, the catch-all, and the per-app Prometheus registry."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from service.app import create_app
from service.cache import LocalEmbeddingCache
from service.errors import STATUS
from tests.service.client import AppClient
from tests.service.conftest import make_settings


def test_unknown_route_and_wrong_method_use_the_error_body(client: AppClient) -> None:
    missing = client.get("/v2/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = client.get("/v1/recall")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"


def test_unexpected_exception_is_500_internal_and_logs_the_stack(
    snapshots: tuple[Path, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_settings(snapshots[0]), cache=LocalEmbeddingCache())

    def boom() -> None:
        raise RuntimeError("kaboom")

    app.add_api_route("/boom", boom)
    with AppClient(app) as client, caplog.at_level(logging.ERROR, logger="service.metrics"):
        response = client.get("/boom")
        metrics = client.get("/metrics").text
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "internal", "message": "internal error; see the service log"}
    }
    assert "kaboom" not in response.text
    assert any(r.exc_info and "kaboom" in str(r.exc_info[1]) for r in caplog.records)
    assert 'route="/boom",status="500"' in metrics


def test_error_codes_map_to_4xx_5xx_statuses_only() -> None:
    assert all(400 <= status < 600 for status in STATUS.values())
    assert STATUS["bad_version"] == 422 and STATUS["checksum_mismatch"] == 409


def test_metrics_count_requests_by_route_template_and_the_cache(client: AppClient) -> None:
    client.post("/v1/recall", json={"user_id": "1"})
    client.post("/v1/recall", json={"user_id": "1"})
    client.get("/v1/items/no-such-item/similar")
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    labels = 'method="POST",route="/v1/recall",status="200"'
    assert f"recall_http_request_duration_seconds_count{{{labels}}} 2.0" in text
    assert 'route="/v1/items/{item_id}/similar",status="404"' in text
    assert "recall_cache_hits_total 1.0" in text and "recall_cache_misses_total 1.0" in text
    assert 'recall_snapshot_info{version="' in text
    assert "recall_reloads_total 1.0" in text


def test_each_app_has_its_own_registry(snapshots: tuple[Path, list[str]]) -> None:
    apps = [create_app(make_settings(snapshots[0]), cache=LocalEmbeddingCache()) for _ in range(2)]
    with AppClient(apps[0]) as first:
        first.post("/v1/recall", json={})
        with AppClient(apps[1]) as second:
            text = second.get("/metrics").text
    assert 'route="/v1/recall"' not in text


def test_openapi_documents_the_configured_limits(client: AppClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    k = schemas["RecallRequest"]["properties"]["k"]
    assert (k["minimum"], k["maximum"], k["default"]) == (1, 1000, 100)
    assert schemas["RecallRequest"]["additionalProperties"] is False
    assert schemas["BatchRecallRequest"]["properties"]["requests"]["maxItems"] == 64
