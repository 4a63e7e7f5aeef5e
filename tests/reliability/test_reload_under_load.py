"""Reloads while clients keep asking: no failed request, no answer mixing two snapshots."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.conftest import ADMIN, REDIS_URL, Server

pytestmark = pytest.mark.slow
RELOADS = 20
PER_RELOAD = 6  # answers the clients get before each reload


def _wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``condition`` until true or ``timeout_s`` (the assertions then say what failed)."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_twenty_reloads_under_load_answer_every_request_from_one_snapshot(
    disjoint: tuple[Path, dict[str, str]],
    serve: Callable[..., Server],
    key_prefix: str,
) -> None:
    root, versions = disjoint
    prefix_of = {version: name for name, version in versions.items()}
    server = serve(root, RECALL_REDIS_URL=REDIS_URL, RECALL_CACHE__KEY_PREFIX=key_prefix)
    stop = threading.Event()
    answers: list[tuple[int, str | None, list[str]]] = []
    failures: list[str] = []

    def send(worker: int) -> None:
        with server.client() as client:
            n = 0
            while not stop.is_set() and n < 5000:  # bounded: stops by itself
                n += 1
                user = str(1 + (worker * 13 + n) % 60)
                if n % 3 == 0:
                    response = client.get(f"/v1/items/{'ab'[n % 2]}{1 + n % 120}/similar?k=5")
                    if response.status_code == 404:  # an item of the other snapshot
                        continue
                else:
                    response = client.post("/v1/recall", json={"user_id": user, "k": 10})
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                    continue
                body = response.json()
                answers.append((worker, body["snapshot"], [i["item_id"] for i in body["items"]]))

    threads = [threading.Thread(target=send, args=(w,)) for w in range(3)]
    for thread in threads:
        thread.start()
    swaps = []
    try:
        with server.client(timeout_s=60) as admin:
            order = [versions["a"], versions["b"]]
            for n in range(RELOADS):
                # Every snapshot state sees traffic: a reload is faster than a request on a
                # quick machine, so without this wait the 20 reloads can end before the
                # clients have sent much at all.
                want = PER_RELOAD * (n + 1)
                _wait_for(lambda: len(answers) >= want or bool(failures))  # noqa: B023 (called at once)
                response = admin.post(
                    "/admin/reload", headers=ADMIN, json={"version": order[n % 2]}
                )
                swaps.append((response.status_code, response.json().get("current")))
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert swaps == [(200, [versions["a"], versions["b"]][n % 2]) for n in range(RELOADS)]
    assert failures == []
    assert len(answers) >= 100
    assert {version for _, version, _ in answers} == set(versions.values())
    for _, version, items in answers:
        assert version in prefix_of
        assert items and all(item.startswith(prefix_of[version]) for item in items), (
            version,
            items,
        )
