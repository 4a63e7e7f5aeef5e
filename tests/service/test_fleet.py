"""One version across replicas sharing a Redis (service.fleet): in-process apps on a real Redis,
each poll driven by the test (``FleetSync.poll_once``), so nothing waits on a timer."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.service.client import AppClient
from tests.service.test_admin import app_client, serving
from tests.service.test_gates import scale_quality, variant

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture()
def prefix() -> Iterator[str]:
    name = f"test-fleet:{secrets.token_hex(4)}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{name}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def replica(root: Path, prefix: str, name: str, **settings: Any) -> AppClient:
    fleet = {"key_prefix": prefix, "replica": name, "poll_s": 600.0}  # polls driven by the test
    return app_client(root, redis_url=REDIS_URL, fleet=fleet, **settings)


def poll(client: AppClient) -> None:
    client.state["services"].fleet.poll_once()


def fleet_view(client: AppClient, admin: dict[str, str]) -> dict[str, Any]:
    response = client.get("/admin/fleet", headers=admin)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_reload_on_one_replica_moves_the_fleet(
    private: tuple[Path, list[str]], prefix: str, admin: dict[str, str]
) -> None:
    root, (older, newer) = private
    with ExitStack() as stack:
        a = stack.enter_context(replica(root, prefix, "a"))
        b = stack.enter_context(replica(root, prefix, "b"))
        assert serving(a) == serving(b) == newer  # the first replica set the fleet's version
        response = a.post("/admin/reload", json={"version": older}, headers=admin)
        assert response.status_code == 200, response.text
        assert serving(b) == newer  # until it polls
        poll(b)
        assert serving(b) == older
        # a rollback on the other replica moves the whole fleet back
        for client in (a, b):
            poll(client)
        response = b.post("/admin/rollback", headers=admin)
        assert response.status_code == 200, response.text
        assert serving(b) == newer
        poll(a)
        assert serving(a) == newer
        view = fleet_view(a, admin)
        assert view["fleet"] and view["version"] == newer and view["replica"] == "a"
        assert {r["replica"]: r["serving"] for r in view["replicas"]} == {"a": newer, "b": newer}
        assert a.get("/v1/recall", params={}).status_code in (405, 422)  # routes untouched
        answer = a.post("/v1/recall", json={"user_id": "u1", "k": 3}).json()
        assert answer["snapshot"] == newer


def test_a_starting_replica_serves_the_fleet_version_not_the_newest(
    private: tuple[Path, list[str]], prefix: str, admin: dict[str, str]
) -> None:
    root, (older, newer) = private
    with replica(root, prefix, "a") as a:
        response = a.post("/admin/reload", json={"version": older}, headers=admin)
        assert response.status_code == 200, response.text
        with replica(root, prefix, "late") as late:
            assert serving(late) == older


def test_a_fleet_version_a_replica_cannot_load_leaves_it_serving(
    private: tuple[Path, list[str]], prefix: str, admin: dict[str, str]
) -> None:
    """Replica b's folder lacks the version the fleet moved to: it keeps what it serves, says
    why in its heartbeat, counts it once, and does not retry every poll."""
    root, (older, newer) = private
    other = root.parent / "b-snapshots"
    shutil.copytree(root, other)
    with replica(root, prefix, "a") as a, replica(other, prefix, "b") as b:
        fresh = variant(root, newer)  # only in a's folder
        assert a.post("/admin/reload", json={"version": fresh}, headers=admin).status_code == 200
        poll(b)
        poll(b)
        assert serving(b) == newer
        metrics = b.get("/metrics").text
        assert "recall_fleet_failures_total 1.0" in metrics
        notes = {r["replica"]: r["note"] for r in fleet_view(a, admin)["replicas"]}
        assert "snapshot_not_found" in notes["b"]
        assert b.post("/v1/recall", json={"user_id": "u1", "k": 3}).status_code == 200


def test_without_redis_a_replica_is_its_own_fleet(
    private: tuple[Path, list[str]], admin: dict[str, str]
) -> None:
    root, (older, newer) = private
    with app_client(root) as client:
        view = fleet_view(client, admin)
        assert view == {"fleet": False, "version": newer, "replica": None, "replicas": []}


def test_a_follower_takes_the_fleet_version_without_comparing_it_again(
    private: tuple[Path, list[str]], prefix: str, admin: dict[str, str]
) -> None:
    """Promoted where the margin allowed it, a version half as good is the fleet's: a replica
    with the default margin follows (the comparison is a promotion's, made once)."""
    root, (older, newer) = private
    with (
        replica(root, prefix, "a", gates={"quality_margin": 0.9}) as a,
        replica(root, prefix, "b") as b,
    ):
        halved = variant(root, newer, lambda m: scale_quality(m, 0.5, 0.5))
        assert a.post("/admin/reload", json={"version": halved}, headers=admin).status_code == 200
        refused = b.post("/admin/reload", json={"version": halved}, headers=admin)
        assert refused.json()["error"]["code"] == "quality_regression"  # as a promotion
        poll(b)
        assert serving(b) == halved
