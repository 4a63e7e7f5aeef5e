"""End to end over a real uvicorn process (`recall serve`), real Redis, real HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import REDIS_URL, recall_serve
from tests.service.fixtures import ADMIN_TOKEN

pytestmark = pytest.mark.slow


@pytest.fixture
def server(snapshots: tuple[Path, list[str]], key_prefix: str, tmp_path: Path) -> Iterator[str]:
    """Base URL of `recall serve` on a free port; stopped afterwards."""
    env = {"RECALL_ADMIN_TOKEN": ADMIN_TOKEN, "RECALL_REDIS_URL": REDIS_URL,
           "RECALL_CACHE__KEY_PREFIX": key_prefix, "RECALL_LOG_LEVEL": "INFO"}  # fmt: skip
    with recall_serve(snapshots[0], tmp_path, **env) as base:
        yield base


def test_recall_for_a_known_user_over_http(server: str, snapshots: tuple[Path, list[str]]) -> None:
    with httpx.Client(base_url=server, timeout=10) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        response = client.post("/v1/recall", json={"user_id": "1", "k": 10})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert body["snapshot"] == snapshots[1][-1] and len(body["items"]) == 10
        again = client.post("/v1/recall", json={"user_id": "1", "k": 10}).json()
        assert again["user"] == {"known": True, "source": "cache"}
        assert "recall_http_request_duration_seconds" in client.get("/metrics").text


def test_reloads_while_requests_are_in_flight_answer_no_errors(
    server: str, snapshots: tuple[Path, list[str]]
) -> None:
    older, newer = snapshots[1]
    stop = threading.Event()
    statuses: list[int] = []
    versions: set[str] = set()

    def send(worker: int) -> None:
        with httpx.Client(base_url=server, timeout=30) as client:
            n = 0
            while not stop.is_set():
                n += 1
                request = {"user_id": str(1 + (worker * 7 + n) % 60), "k": 20}
                response = client.post("/v1/recall", json=request)
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.add(response.json()["snapshot"])

    threads = [threading.Thread(target=send, args=(w,)) for w in range(3)]
    for thread in threads:
        thread.start()
    swaps: list[tuple[int, str | None]] = []
    targets = [older, newer]
    try:
        with httpx.Client(base_url=server, timeout=60) as admin:
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            # swap back and forth until plenty of requests ran across the swaps
            while len(swaps) < 6 or (len(statuses) < 300 and len(swaps) < 200):
                target = targets[len(swaps) % 2]
                response = admin.post("/admin/reload", headers=headers, json={"version": target})
                swaps.append((response.status_code, response.json().get("current")))
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert swaps == [(200, targets[i % 2]) for i in range(len(swaps))]
    assert len(statuses) >= 300 or len(swaps) == 200
    assert all(200 <= s < 300 for s in statuses), sorted(set(statuses))
    assert versions == {older, newer}
