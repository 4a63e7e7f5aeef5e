"""The user-vector caches and the circuit breaker, with a fake clock; cache keys."""

from __future__ import annotations

import socket

import redis

from service.breaker import CircuitBreaker
from service.cache import LocalEmbeddingCache, RedisEmbeddingCache
from service.recaller import cache_key
from service.schemas import RecallRequest
from service.settings import RedisSettings


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_local_cache_expires_entries_and_evicts_least_recently_used() -> None:
    clock = Clock()
    cache = LocalEmbeddingCache(max_entries=2, clock=clock)
    cache.set_many({"a": b"1", "b": b"2"}, ttl_s=10)
    assert cache.get_many(["a"]) == [b"1"]  # a is now the most recently used
    cache.set_many({"c": b"3"}, ttl_s=10)
    assert cache.get_many(["a", "b", "c"]) == [b"1", None, b"3"]
    clock.now = 10.0
    assert cache.get_many(["a", "c"]) == [None, None]
    assert cache.state() == "local"


def test_breaker_opens_after_consecutive_failures_and_half_opens_after_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, cooldown_s=5.0, clock=clock)
    breaker.record(False)
    breaker.record(True)  # a success resets the count
    for _ in range(2):
        breaker.record(False)
    assert breaker.allow() and not breaker.healthy
    breaker.record(False)
    assert not breaker.allow()  # open
    clock.now = 5.0
    assert breaker.allow()  # half-open: one trial ...
    assert not breaker.allow()  # ... and only one
    breaker.record(False)  # the trial failed: open again for a full cooldown
    clock.now = 9.0
    assert not breaker.allow()
    clock.now = 10.0
    assert breaker.allow()
    breaker.record(True)
    assert breaker.healthy and breaker.allow()


def test_a_costly_failure_opens_the_breaker_at_once() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=5, cooldown_s=5.0, clock=clock)
    breaker.record(False)
    assert breaker.allow()  # one cheap failure of five
    breaker.record(False, costly=True)
    assert not breaker.allow()
    clock.now = 5.0
    assert breaker.allow()  # half-open as usual
    breaker.record(True)
    assert breaker.healthy


class TimingOut:
    """A redis client whose every command waits out its timeout."""

    def mget(self, keys: list[str]) -> list[bytes | None]:
        raise redis.TimeoutError("Timeout reading from socket")

    def close(self) -> None:
        return None


def test_a_redis_timeout_opens_the_circuit_after_one_call() -> None:
    errors: list[str] = []
    breaker = CircuitBreaker(failures=5, cooldown_s=60.0)
    cache = RedisEmbeddingCache(TimingOut(), breaker, errors.append)  # type: ignore[arg-type]
    assert cache.get_many(["a"]) == [None]
    assert cache.get_many(["a"]) == [None]  # not asked again: the circuit is open
    assert errors == ["get"] and cache.state() == "degraded"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_redis_cache_fails_open_when_redis_is_unreachable() -> None:
    errors: list[str] = []
    settings = RedisSettings(retries=1, breaker_failures=2, breaker_cooldown_s=60.0)
    url = f"redis://127.0.0.1:{closed_port()}/0"
    cache = RedisEmbeddingCache.from_url(url, settings, on_error=errors.append)
    assert cache.get_many(["a", "b"]) == [None, None]
    cache.set_many({"a": b"1"}, ttl_s=10)
    assert errors == ["get", "set"]
    assert cache.state() == "degraded"
    assert cache.get_many(["a"]) == [None]  # open: Redis is not even asked
    cache.ping()
    assert errors == ["get", "set"]
    cache.close()


def test_cache_key_carries_version_and_user_and_changes_with_the_inputs() -> None:
    plain = RecallRequest(user_id="42")
    key = cache_key("recall:uvec", "20250101T000000Z-0a1b2c3d", plain)
    prefix, hash_ = key.rsplit(":", 1)
    assert prefix == "recall:uvec:20250101T000000Z-0a1b2c3d:42"
    assert len(hash_) == 16
    anonymous = cache_key("recall:uvec", "v", RecallRequest(features={"age": 3}))
    assert anonymous.split(":")[3] == "-"
    variants = [
        plain,
        RecallRequest(user_id="42", features={"age": 30}),
        RecallRequest(user_id="42", history=["1"]),
        RecallRequest(user_id="42", history=[]),
    ]
    assert len({cache_key("p", "v", r) for r in variants}) == len(variants)
    same = RecallRequest(user_id="42", k=5, exclude_seen=False, filter={"genres": ["War"]})
    assert cache_key("p", "v", same) == cache_key("p", "v", plain)  # not vector inputs
