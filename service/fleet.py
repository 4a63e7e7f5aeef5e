"""One snapshot version for a fleet of replicas that share a Redis.

The version the fleet serves lives in Redis under ``<prefix>:version``, the one before it under
``<prefix>:previous`` (a rollback's target, so a rollback works on a replica that restarted
since). A successful reload or rollback on any replica sets them; every replica polls the
version (``poll_s``) and reloads it from the shared snapshots folder when it differs from what
it serves, so the fleet converges within a poll or two, whichever replica got the call, and
a replica that starts (or restarts) loads the fleet's version, not the newest on disk. A
version that fails to load here is not retried until the fleet's version changes (it is
logged and counted once). Each replica also writes a heartbeat ``<prefix>:replica:<id>``
(what it serves, since when; expiring after ``heartbeat_ttl_s``), which ``GET /admin/fleet``
lists.

Polling is the mechanism, not pub/sub: a subscriber that reconnects misses what was published
meanwhile, a poll never does. Without ``RECALL_REDIS_URL`` there is no fleet and a replica
behaves on its own, as before. Every Redis call runs off the event loop, with the client's
short timeouts; a Redis outage leaves every replica serving what it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from typing import Any

import redis
from starlette.concurrency import run_in_threadpool

from service.errors import Code, ServiceError
from service.holder import SnapshotHolder, Swap
from service.metrics import Metrics
from service.settings import FleetSettings, RedisSettings

log = logging.getLogger(__name__)


def _text(value: Any) -> str | None:
    """A Redis value (bytes, or None for a missing key) as text."""
    return value.decode() if isinstance(value, bytes) else value


def replica_name() -> str:
    """This process's name in the fleet: host name and process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Fleet:
    """The fleet's version and this replica's heartbeat in Redis (blocking calls)."""

    def __init__(self, client: redis.Redis, settings: FleetSettings, name: str | None = None):
        self.client, self.settings = client, settings
        self.name = settings.replica or name or replica_name()
        self.started = time.time()

    @classmethod
    def from_url(cls, url: str, redis_settings: RedisSettings, settings: FleetSettings) -> Fleet:
        client = redis.Redis.from_url(
            url,
            socket_timeout=max(redis_settings.socket_timeout_ms, 200) / 1000,
            socket_connect_timeout=max(redis_settings.connect_timeout_ms, 200) / 1000,
        )
        return cls(client, settings)

    @property
    def version_key(self) -> str:
        return f"{self.settings.key_prefix}:version"

    def replica_key(self, name: str) -> str:
        return f"{self.settings.key_prefix}:replica:{name}"

    def target(self) -> str | None:
        """The version the fleet serves (None: none set yet). Raises redis.RedisError."""
        return _text(self.client.get(self.version_key))

    @property
    def previous_key(self) -> str:
        return f"{self.settings.key_prefix}:previous"

    def set_target(self, version: str) -> None:
        """Make ``version`` the fleet's; the one it replaces becomes the rollback target."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.get(self.version_key)
            pipe.set(self.version_key, version)
            old, _ = pipe.execute()
        old = _text(old)
        if old is not None and old != version:
            self.client.set(self.previous_key, old)

    def previous(self) -> str | None:
        """The version the fleet served before its current one (a rollback's target)."""
        return _text(self.client.get(self.previous_key))

    def claim(self, version: str) -> str:
        """Set the fleet's version to ``version`` unless one is set; the fleet's version."""
        self.client.set(self.version_key, version, nx=True)
        return self.target() or version

    def heartbeat(self, serving: str | None, note: str | None = None) -> None:
        body = {
            "replica": self.name,
            "serving": serving,
            "started": self.started,
            "seen": time.time(),
            "note": note,
        }
        self.client.set(
            self.replica_key(self.name), json.dumps(body), ex=self.settings.heartbeat_ttl_s
        )

    def replicas(self) -> list[dict[str, Any]]:
        keys = sorted(self.client.scan_iter(match=self.replica_key("*"), count=100))
        values = self.client.mget(keys) if keys else []
        return [json.loads(value) for value in values if value is not None]

    def close(self) -> None:
        with contextlib.suppress(redis.RedisError):  # its heartbeat would expire anyway
            self.client.delete(self.replica_key(self.name))
        self.client.close()


class FleetSync:
    """The background task that keeps this replica on the fleet's version."""

    def __init__(self, fleet: Fleet, holder: SnapshotHolder, metrics: Metrics):
        self.fleet, self.holder, self.metrics = fleet, holder, metrics
        self.failed: str | None = None  # the fleet version that failed to load here
        self.note: str | None = None

    def start_up(self) -> None:
        """Serve the fleet's version (blocking); without one, the newest loadable one, which
        becomes the fleet's."""
        try:
            target = self.fleet.target()
        except redis.RedisError as exc:
            log.warning("fleet version unreadable (%s); serving the newest snapshot", exc)
            self.holder.load_newest()
            return
        if target is not None:
            self._follow(target)  # failed: the newest, as without a fleet version
        served = self.holder.load_newest() if self.holder.current is None else None
        try:
            if target is None and served is not None:
                self.fleet.claim(served)
            current = self.holder.current
            self.fleet.heartbeat(current.version if current else None, self.note)
        except redis.RedisError as exc:
            log.warning("fleet version or heartbeat not written (%s)", exc)

    def rollback(self) -> Swap:
        """The fleet's rollback (blocking): serve the version the fleet served before, from
        disk, whatever this process served before (a restarted replica remembers nothing);
        without one in Redis, this replica's own previous snapshot. Then announce it."""
        try:
            previous = self.fleet.previous()
        except redis.RedisError as exc:
            raise ServiceError(Code.FLEET_UNAVAILABLE, f"the fleet's Redis: {exc}") from exc
        current = self.holder.current
        if previous is None or (current is not None and previous == current.version):
            swap = self.holder.rollback()
        else:
            swap = self.holder.reload(previous, compare=False)
            swap = Swap(swap.changed, swap.current, swap.previous, f"rolled back to {previous}")
        self.announce()
        return swap

    def announce(self) -> None:
        """After a reload or rollback here: the fleet serves what this replica now serves."""
        current = self.holder.current
        if current is None:
            return
        try:
            self.fleet.set_target(current.version)
            self.failed, self.note = None, None
            log.info("fleet version set to %s", current.version)
            self.fleet.heartbeat(current.version)
        except redis.RedisError as exc:
            log.error("fleet version not set to %s (%s): other replicas keep theirs",
                      current.version, exc)  # fmt: skip

    def poll_once(self) -> None:
        """One heartbeat and, when the fleet's version moved, a reload to it (blocking)."""
        try:
            target = self.fleet.target()
        except redis.RedisError as exc:
            log.warning("fleet version unreadable (%s); serving what is served", exc)
            return
        current = self.holder.current
        if target is not None and (current is None or current.version != target):
            self._follow(target)
        try:
            self.fleet.heartbeat(self.holder.current.version if self.holder.current else None,
                                 self.note)  # fmt: skip
        except redis.RedisError as exc:
            log.warning("fleet heartbeat failed (%s)", exc)

    def _follow(self, target: str) -> bool:
        if target == self.failed:
            return False
        try:  # the fleet's version passed the comparison where it was promoted
            swap = self.holder.reload(target, compare=False)
        except ServiceError as exc:
            self.failed = target
            self.note = f"cannot serve the fleet's {target}: {exc.code}"
            self.metrics.fleet_failures.inc()
            log.error("fleet version %s refused here (%s): %s", target, exc.code, exc.message)
            return False
        self.failed, self.note = None, None
        if swap.changed:
            self.metrics.fleet_follows.inc()
            log.info("following the fleet to %s", target)
        return True

    async def run(self) -> None:
        """Poll forever (cancelled at shutdown)."""
        while True:
            await asyncio.sleep(self.fleet.settings.poll_s)
            try:
                await run_in_threadpool(self.poll_once)
            except Exception:  # never let the task die: the next poll tries again
                log.exception("fleet poll failed")
