"""TieredEmbeddingCache: the process first, Redis behind it, writes in the background."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from service.cache import CacheState, LocalEmbeddingCache
from service.tiered import TieredEmbeddingCache


class FakeRemote:
    """An EmbeddingCache that records calls; ``gate`` holds writes until set."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.gets: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self.gets.append(list(keys))
        return [self.values.get(key) for key in keys]

    def set_many(self, values: Mapping[str, bytes], ttl_s: int) -> None:
        self.gate.wait(5)
        self.values.update(values)

    def ping(self) -> None:
        return None

    def state(self) -> CacheState:
        return "ok"

    def close(self) -> None:
        return None


def test_reads_ask_the_remote_only_for_local_misses_and_keep_its_hits() -> None:
    remote = FakeRemote()
    remote.values = {"b": b"2"}
    cache = TieredEmbeddingCache(LocalEmbeddingCache(10), remote, ttl_s=60)
    cache.local.set_many({"a": b"1"}, 60)
    assert cache.get_many(["a", "b", "c"]) == [b"1", b"2", None]
    assert remote.gets == [["b", "c"]]
    assert cache.get_many(["b"]) == [b"2"]  # now local
    assert remote.gets == [["b", "c"]]
    cache.close()


def test_writes_land_locally_at_once_and_remotely_behind() -> None:
    remote = FakeRemote()
    remote.gate.clear()  # a stalled Redis
    cache = TieredEmbeddingCache(LocalEmbeddingCache(10), remote, ttl_s=60)
    cache.set_many({"a": b"1"}, 60)  # returns although Redis does not answer
    assert cache.get_many(["a"]) == [b"1"] and remote.values == {}
    remote.gate.set()
    assert cache.flush()
    assert remote.values == {"a": b"1"}
    cache.close()


def test_writes_are_dropped_and_counted_when_the_queue_is_full() -> None:
    remote = FakeRemote()
    remote.gate.clear()
    dropped: list[int] = []
    cache = TieredEmbeddingCache(LocalEmbeddingCache(0), remote, 60, on_drop=dropped.append)
    for n in range(1100):  # more than the queue holds while the writer is stuck
        cache.set_many({f"k{n}": b"v"}, 60)
    assert sum(dropped) >= 1100 - 1025
    remote.gate.set()
    assert cache.flush()
    cache.close()


def test_write_through_reaches_the_remote_before_returning() -> None:
    remote = FakeRemote()
    cache = TieredEmbeddingCache(LocalEmbeddingCache(10), remote, 60, write_behind=False)
    cache.set_many({"a": b"1"}, 60)
    assert remote.values == {"a": b"1"}
    cache.close()
