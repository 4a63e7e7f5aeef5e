"""A two-level user-vector cache: an in-process LRU in front of Redis, Redis written behind.

Reads try the process first and ask Redis only for what it lacks (hits fill the process).
Writes land in the process at once; Redis gets them from one background thread, so a slow or
paused Redis never holds up an answer. The queue of pending writes is bounded: when Redis
cannot keep up, the newest writes are dropped (counted): it is a cache. The versioned keys
make both levels safe across reloads: a key names the model that made the vector.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from service.cache import CacheState, EmbeddingCache, LocalEmbeddingCache

log = logging.getLogger(__name__)
WRITE_QUEUE = 1024  # pending write batches before new ones are dropped
WRITE_INTERVAL_S = 0.01  # writes gather this long before one pipeline takes them to Redis


class TieredEmbeddingCache:
    """``local`` in front of ``remote``; implements the ``EmbeddingCache`` Protocol.

    ``ttl_s`` is how long a value read from ``remote`` stays in ``local``.
    """

    def __init__(
        self,
        local: LocalEmbeddingCache,
        remote: EmbeddingCache,
        ttl_s: int,
        on_drop: Callable[[int], None] = lambda count: None,
        write_behind: bool = True,
    ):
        self.local, self.remote, self.ttl_s, self.on_drop = local, remote, ttl_s, on_drop
        self.write_behind = write_behind
        self._writes: queue.Queue[tuple[dict[str, bytes], int] | None] = queue.Queue(WRITE_QUEUE)
        self._writer = threading.Thread(target=self._write_behind, name="cache-writer", daemon=True)
        self._writer.start()

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        found = self.local.get_many(keys)
        missing = [i for i, value in enumerate(found) if value is None]
        if not missing:
            return found
        hits = {}
        for i, value in zip(missing, self.remote.get_many([keys[i] for i in missing]), strict=True):
            if value is not None:
                found[i] = hits[keys[i]] = value
        if hits:
            self.local.set_many(hits, self.ttl_s)
        return found

    def set_many(self, values: Mapping[str, bytes], ttl_s: int) -> None:
        if not values:
            return
        self.local.set_many(values, ttl_s)
        if not self.write_behind:
            self.remote.set_many(values, ttl_s)
            return
        try:
            self._writes.put_nowait((dict(values), ttl_s))
        except queue.Full:
            self.on_drop(len(values))

    def ping(self) -> None:
        self.remote.ping()

    def state(self) -> CacheState:
        return self.remote.state()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until the writes queued so far reached ``remote``; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._writes.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.002)
        return not self._writes.unfinished_tasks

    def close(self) -> None:
        self._writes.put(None)
        self._writer.join(5)
        self.remote.close()
        self.local.close()

    def _write_behind(self) -> None:
        while True:
            items = [self._writes.get()]
            # Let writes gather for a moment: one pipeline and one GIL hand-off per interval
            # instead of one per batch (each hand-off stalls the event loop on two cores).
            time.sleep(WRITE_INTERVAL_S)
            while True:
                try:
                    items.append(self._writes.get_nowait())
                except queue.Empty:
                    break
            merged: dict[int, dict[str, bytes]] = {}
            for item in items:
                if item is not None:
                    merged.setdefault(item[1], {}).update(item[0])
            try:
                for ttl_s, values in merged.items():
                    self.remote.set_many(values, ttl_s)  # fails open, never raises
            except Exception:  # the writer must outlive any surprise
                log.exception("write-behind to the cache failed")
            finally:
                for _ in items:
                    self._writes.task_done()
            if None in items:
                return
