"""Redis killed, restarted empty, or paused under load: requests keep succeeding, and a paused
Redis is cut off by the breaker (latency under these faults belongs in bench/)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import wait_until
from tests.reliability.conftest import RedisProcess, Server

pytestmark = pytest.mark.slow


class Load:
    """Client threads sending recall requests until stopped; every outcome recorded."""

    def __init__(self, server: Server, threads: int = 3):
        self.server, self.stop = server, threading.Event()
        self.latencies_ms: list[float] = []
        self.failures: list[str] = []
        self.sources: list[str] = []
        self.unique = itertools.count()
        self.threads = [threading.Thread(target=self._send, args=(n,)) for n in range(threads)]

    def _send(self, worker: int) -> None:
        with self.server.client() as client:
            for n in range(100_000):  # bounded: stops by itself
                if self.stop.is_set():
                    return
                if n % 2:  # a known user: cached after the first time
                    body = {"user_id": str(1 + (worker * 7 + n) % 60), "k": 10}
                else:  # never asked before: a cache miss and a cache write
                    body = {"user_id": f"new-{next(self.unique)}", "features": {"age": 30}}
                started = time.perf_counter()
                try:
                    response = client.post("/v1/recall", json=body)
                except Exception as exc:
                    self.failures.append(repr(exc))
                    continue
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")
                else:
                    self.sources.append(response.json()["user"]["source"])

    @contextmanager
    def running(self) -> Iterator[Load]:
        for thread in self.threads:
            thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            for thread in self.threads:
                thread.join(60)

    def since(self, mark: int) -> list[float]:
        return self.latencies_ms[mark:]


def keys_in(server: RedisProcess) -> int:
    client = redis.Redis(port=server.port, socket_timeout=0.5)
    try:
        return int(client.dbsize())
    except redis.RedisError:
        return 0
    finally:
        client.close()


def ready_cache(server: Server) -> str:
    with server.client() as client:
        return str(client.get("/readyz").json()["cache"])


def test_redis_killed_mid_load_then_restarted_empty_fails_no_request(
    disjoint: tuple[Path, dict[str, str]],
    serve: Callable[..., Server],
    own_redis: RedisProcess,
) -> None:
    server = serve(disjoint[0], RECALL_REDIS_URL=own_redis.url,
                   RECALL_REDIS__BREAKER_COOLDOWN_S="0.5")  # fmt: skip
    with Load(server).running() as load:
        wait_until(lambda: keys_in(own_redis) > 10, 30, "the cache to fill")
        own_redis.kill()
        mark = len(load.latencies_ms)
        wait_until(lambda: len(load.latencies_ms) > mark + 200, 60, "requests without Redis")
        assert ready_cache(server) == "degraded"
        own_redis.start()  # same port, empty
        wait_until(lambda: keys_in(own_redis) > 10, 30, "the cache to fill again")
        wait_until(lambda: ready_cache(server) == "ok", 30, "readiness to see Redis again")
        after = len(load.latencies_ms)
        wait_until(lambda: len(load.latencies_ms) > after + 50, 60, "requests after the restart")
    assert load.failures == []
    assert "cache" in load.sources and "computed" in load.sources


def cache_errors(server: Server) -> float:
    with server.client() as client:
        lines = client.get("/metrics").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines
               if line.startswith("recall_cache_errors_total{"))  # fmt: skip


def test_redis_paused_fails_no_request_and_the_breaker_stops_calling_it(
    disjoint: tuple[Path, dict[str, str]],
    serve: Callable[..., Server],
    own_redis: RedisProcess,
) -> None:
    """A paused Redis answers nothing: each call waits out its socket timeout. After
    ``breaker_failures`` of them the breaker opens and (cool-down far away) no request touches
    Redis again, so the requests of the pause cost at most that many timeouts in all. How long
    they take is measured in bench/, not asserted here."""
    server = serve(disjoint[0], RECALL_REDIS_URL=own_redis.url,
                   RECALL_REDIS__BREAKER_COOLDOWN_S="600")  # fmt: skip
    with Load(server).running() as load:
        wait_until(lambda: keys_in(own_redis) > 10, 30, "the cache to fill")
        assert cache_errors(server) == 0
        own_redis.pause()
        try:
            mark = len(load.latencies_ms)
            wait_until(lambda: len(load.latencies_ms) > mark + 200, 60, "requests while paused")
            assert ready_cache(server) == "degraded"
            errors = cache_errors(server)
        finally:
            own_redis.resume()
    assert load.failures == []
    assert 1 <= errors <= 5 + 2  # breaker_failures, and a write in flight beside the read
