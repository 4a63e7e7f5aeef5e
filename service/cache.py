"""User-vector cache: the ``EmbeddingCache`` Protocol, a Redis one and an in-process LRU.

The cache is an optimisation and fails open: ``RedisEmbeddingCache`` catches every Redis
error, reports it, and answers "miss" so the caller computes the vector. A circuit breaker
stops calling Redis after repeated failures so a dead Redis costs no timeouts per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, Protocol

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from service.breaker import CircuitBreaker
from service.settings import RedisSettings

log = logging.getLogger(__name__)
CacheState = Literal["ok", "degraded", "local"]


class EmbeddingCache(Protocol):
    """Stores user vectors as bytes under versioned keys."""

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """One value (or None for a miss) per key, in order; never raises."""
        ...

    def set_many(self, values: Mapping[str, bytes], ttl_s: int) -> None:
        """Store values with a time to live; never raises."""
        ...

    def ping(self) -> None:
        """Probe the backend (readiness); never raises."""
        ...

    def state(self) -> CacheState:
        """``ok``, ``degraded`` (Redis failing, vectors computed) or ``local``."""
        ...

    def close(self) -> None: ...


class LocalEmbeddingCache:
    """In-process LRU with per-entry expiry, used when no Redis is configured."""

    def __init__(self, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic):
        self.max_entries, self.clock = max_entries, clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now, out = self.clock(), list[bytes | None]()
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is None or entry[0] <= now:
                    self._entries.pop(key, None)
                    out.append(None)
                    continue
                self._entries.move_to_end(key)
                out.append(entry[1])
        return out

    def set_many(self, values: Mapping[str, bytes], ttl_s: int) -> None:
        expires = self.clock() + ttl_s
        with self._lock:
            for key, value in values.items():
                self._entries[key] = (expires, value)
                self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def ping(self) -> None:
        return None

    def state(self) -> CacheState:
        return "local"

    def close(self) -> None:
        with self._lock:
            self._entries.clear()


class RedisEmbeddingCache:
    """Redis-backed cache with short timeouts, bounded retries and a circuit breaker.

    ``on_error(operation)`` is called once per failed operation (e.g. to count it).
    """

    def __init__(
        self,
        client: redis.Redis,
        breaker: CircuitBreaker,
        on_error: Callable[[str], None] = lambda operation: None,
    ):
        self.client, self.breaker, self.on_error = client, breaker, on_error

    @classmethod
    def from_url(
        cls, url: str, settings: RedisSettings, on_error: Callable[[str], None] = lambda op: None
    ) -> RedisEmbeddingCache:
        client = redis.Redis.from_url(
            url,
            socket_timeout=settings.socket_timeout_ms / 1000,
            socket_connect_timeout=settings.connect_timeout_ms / 1000,
            # Retry a dropped connection (e.g. after a Redis restart), never a timeout: a
            # second wait on a stalled Redis only doubles what every request pays.
            retry=Retry(
                ExponentialBackoff(cap=0.05, base=0.005),
                settings.retries,
                supported_errors=(redis.ConnectionError,),
            ),
            max_connections=settings.max_connections,
        )
        breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s)
        return cls(client, breaker, on_error)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        misses: list[bytes | None] = [None] * len(keys)
        if not keys or not self.breaker.allow():
            return misses
        try:
            values = self.client.mget(list(keys))
        except Exception as exc:  # fails open, whatever went wrong
            self._failed("get", exc)
            return misses
        self.breaker.record(True)
        return [v if isinstance(v, bytes) else None for v in values]

    def set_many(self, values: Mapping[str, bytes], ttl_s: int) -> None:
        if not values or not self.breaker.allow():
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for key, value in values.items():
                pipe.set(key, value, ex=ttl_s)
            pipe.execute()
        except Exception as exc:  # fails open, whatever went wrong
            self._failed("set", exc)
            return
        self.breaker.record(True)

    def ping(self) -> None:
        """Probe Redis when the breaker allows it, so readiness recovers without traffic."""
        if not self.breaker.allow():
            return
        try:
            self.client.ping()
        except Exception as exc:  # fails open, whatever went wrong
            self._failed("ping", exc)
            return
        self.breaker.record(True)

    def state(self) -> CacheState:
        return "ok" if self.breaker.healthy else "degraded"

    def close(self) -> None:
        self.client.close()

    def _failed(self, operation: str, exc: Exception) -> None:
        if isinstance(exc, redis.RedisError):
            log.debug("redis %s failed: %r", operation, exc)
        else:
            log.warning("redis %s failed unexpectedly", operation, exc_info=exc)
        self.on_error(operation)
        # a timeout held the caller for the whole socket timeout: open the circuit at once
        self.breaker.record(False, costly=isinstance(exc, redis.TimeoutError))
