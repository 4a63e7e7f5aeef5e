"""The user-vector cache on real Redis: hits, TTL, versioned keys, and failing open."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from service.app import create_app
from service.recaller import unseal
from service.settings import RedisSettings
from tests.integration.conftest import REDIS_URL, RedisProcess, wait_until
from tests.service.client import AppClient
from tests.service.conftest import make_settings
from tests.service.fixtures import ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def app_on_redis(snapshots: tuple[Path, list[str]], key_prefix: str) -> Iterator[AppClient]:
    # written before each response: the test reads Redis right after one
    cache = {"key_prefix": key_prefix, "ttl_s": 120, "write_behind": False}
    settings = make_settings(snapshots[0], redis_url=REDIS_URL, cache=cache)
    with AppClient(create_app(settings)) as client:
        yield client


def source(client: AppClient, request: dict) -> str:
    response = client.post("/v1/recall", json=request)
    assert response.status_code == 200, response.text
    return str(response.json()["user"]["source"])


def test_second_request_is_a_cache_hit_with_a_ttl_and_a_versioned_key(
    app_on_redis: AppClient,
    real_redis: redis.Redis,
    key_prefix: str,
    snapshots: tuple[Path, list[str]],
) -> None:
    older, newer = snapshots[1]
    assert app_on_redis.get("/readyz").json()["cache"] == "ok"
    assert source(app_on_redis, {"user_id": "1"}) == "computed"
    assert source(app_on_redis, {"user_id": "1"}) == "cache"
    assert source(app_on_redis, {"user_id": "1", "features": {"age": 20}}) == "computed"
    keys = sorted(k.decode() for k in real_redis.scan_iter(match=f"{key_prefix}:*"))
    assert len(keys) == 2
    assert all(key.startswith(f"{key_prefix}:{newer}:1:") for key in keys)
    assert all(0 < real_redis.ttl(key) <= 120 for key in keys)
    blob = real_redis.get(keys[0])
    assert isinstance(blob, bytes)
    vector = unseal(keys[0], blob, 8)
    assert vector is not None
    assert vector.shape == (8,) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4
    # another snapshot never reads these vectors: its keys carry its own version
    assert app_on_redis.post("/admin/reload", headers=ADMIN, json={"version": older}).is_success
    assert source(app_on_redis, {"user_id": "1"}) == "computed"
    assert any(k.decode().startswith(f"{key_prefix}:{older}:1:")
               for k in real_redis.scan_iter(match=f"{key_prefix}:*"))  # fmt: skip


@pytest.fixture
def app_on_own_redis(
    snapshots: tuple[Path, list[str]], own_redis: RedisProcess
) -> Iterator[AppClient]:
    quick = RedisSettings(socket_timeout_ms=50, connect_timeout_ms=50, retries=0,
                          breaker_failures=2, breaker_cooldown_s=0.2)  # fmt: skip
    # no in-process first level, writes before each response: these tests watch Redis itself
    cache = {"local_max_entries": 0, "write_behind": False}
    settings = make_settings(snapshots[0], redis_url=own_redis.url, redis=quick, cache=cache)
    with AppClient(create_app(settings)) as client:
        yield client


def cache_state(client: AppClient) -> str:
    return str(client.get("/readyz").json()["cache"])


def test_requests_succeed_while_redis_is_killed_and_cache_recovers_after_restart(
    app_on_own_redis: AppClient, own_redis: RedisProcess
) -> None:
    client = app_on_own_redis
    assert source(client, {"user_id": "2"}) == "computed"
    assert source(client, {"user_id": "2"}) == "cache"
    own_redis.kill()
    for _ in range(5):
        assert source(client, {"user_id": "2"}) == "computed"
    assert cache_state(client) == "degraded"
    metrics = client.get("/metrics").text
    assert 'recall_cache_errors_total{operation="get"}' in metrics
    own_redis.start()
    wait_until(lambda: cache_state(client) == "ok", 10, "readiness to see Redis again")
    assert source(client, {"user_id": "2"}) == "computed"  # the new Redis is empty
    assert source(client, {"user_id": "2"}) == "cache"


def test_requests_succeed_while_redis_is_paused(
    app_on_own_redis: AppClient, own_redis: RedisProcess
) -> None:
    client = app_on_own_redis
    assert source(client, {"user_id": "3"}) == "computed"
    own_redis.pause()
    for _ in range(3):
        assert source(client, {"user_id": "3"}) == "computed"  # timed out: computed instead
    batch = client.post("/v1/recall/batch", json={"requests": [{"user_id": "3"}, {}]})
    assert batch.status_code == 200
    assert cache_state(client) == "degraded"
    own_redis.resume()
    wait_until(lambda: cache_state(client) == "ok", 10, "readiness to see Redis again")
    assert source(client, {"user_id": "3"}) == "cache"  # written before the pause
