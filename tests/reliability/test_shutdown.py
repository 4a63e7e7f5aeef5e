"""SIGTERM under load: the requests in flight are answered, then the process exits 0.

To have requests reliably in flight when the signal lands, the server's Redis is paused with
a 1 s socket timeout and no in-process first level: every batch of cache misses waits that
long on Redis. The signal is sent once the server's debug log shows a batch started after the
pause (so one is in flight), never after a fixed sleep. Each held request must be answered 200,
and the process must exit 0.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import wait_until
from tests.reliability.conftest import RedisProcess, Server

pytestmark = pytest.mark.slow
HELD = 12  # requests sent while Redis is paused, in flight at the signal


def test_sigterm_answers_the_requests_in_flight_then_exits_0(
    disjoint: tuple[Path, dict[str, str]],
    serve: Callable[..., Server],
    own_redis: RedisProcess,
) -> None:
    server = serve(
        disjoint[0],
        RECALL_REDIS_URL=own_redis.url,
        RECALL_REDIS__SOCKET_TIMEOUT_MS="1000",
        RECALL_REDIS__RETRIES="0",
        RECALL_REDIS__BREAKER_FAILURES="1000",
        RECALL_CACHE__LOCAL_MAX_ENTRIES="0",
        RECALL_LOG_LEVEL="DEBUG",
        RECALL_BATCH__SHED_AFTER_MS="10000",
        RECALL_BATCH__STANDING_AFTER_MS="60000",
    )  # batches wait 1 s here: no shedding
    signalled = threading.Event()
    background: list[tuple[bool, str]] = []  # (sent after the signal, outcome)

    def keep_sending(worker: int) -> None:
        with server.client(timeout_s=30) as client:
            for n in range(10_000):  # bounded; ends when the server is gone
                after = signalled.is_set()
                try:
                    response = client.post("/v1/recall", json={"user_id": str(1 + n % 60)})
                except httpx.HTTPError as exc:
                    background.append((after, type(exc).__name__))
                    if after:
                        return
                    continue
                background.append((after, str(response.status_code)))

    held: list[tuple[str, float]] = []  # (outcome, monotonic time of the answer)

    def send_one(n: int) -> None:
        try:
            body = {"user_id": f"held-{n}", "features": {"age": 20 + n}}
            response = httpx.post(f"{server.url}/v1/recall", json=body, timeout=60)
            held.append((str(response.status_code), time.monotonic()))
        except httpx.HTTPError as exc:
            held.append((type(exc).__name__, time.monotonic()))

    loaders = [threading.Thread(target=keep_sending, args=(w,)) for w in range(2)]
    for thread in loaders:
        thread.start()
    wait_until(lambda: len(background) > 50, 60, "load before the signal")
    offset = len(server.log.read_bytes())
    own_redis.pause()
    try:
        senders = [threading.Thread(target=send_one, args=(n,)) for n in range(HELD)]
        for thread in senders:
            thread.start()
        # read by the server: in flight, their batches waiting on the paused Redis
        # a batch has started and waits on the paused Redis (1 s): the signal lands while it
        # is in flight; held requests not read yet are read during the drain
        wait_until(lambda: b"flush of" in server.log.read_bytes()[offset:], 60, "a batch")
        signalled.set()
        signal_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        # the server has begun its shutdown while the held requests still wait on Redis
        wait_until(lambda: "draining for" in server.log.read_text(), 60, "the shutdown to begin")
    finally:
        own_redis.resume()
    for thread in senders:
        thread.join(60)
    assert server.process.wait(30) == 0
    for thread in loaders:
        thread.join(60)
    assert [outcome for outcome, _ in held] == ["200"] * HELD
    answered_after = sum(at > signal_at for _, at in held)
    assert answered_after > 0, "no request was in flight at the signal"
    before = [outcome for after, outcome in background if not after]
    assert before and set(before) == {"200"}
    # after the signal: answered (200) or refused at the connection, never an HTTP error
    assert all(o == "200" or not o.isdigit() for after, o in background if after)
