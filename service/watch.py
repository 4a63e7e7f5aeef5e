"""The watch after a swap: roll a new snapshot back when it answers worse than the one before.

Every answered recall request is recorded (``record``: the version that answered it, its
latency, whether it failed, whether its answer was empty or the popularity fallback). A swap
by reload (``start``) opens a watch of ``window_s``: the requests the new version answers are
compared with those the old one answered in the ``window_s`` before the swap. Once at least
``min_requests`` were answered by the new one, ``verdict`` names the first of these past its
threshold, else None:

- error share above the old one's by more than ``max_error_increase`` (absolute);
- p99 latency above ``max_p99_ratio`` x the old one's (and at least 5 ms above it);
- share of empty or fallback answers above the old one's by more than ``max_empty_increase``.

The app's watch task then rolls back (the fleet's rollback with a Redis), logs why and counts
it (``recall_auto_rollbacks_total``). A rollback is not watched itself, and a watch ends after
``window_s`` or at the next swap.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from service.settings import WatchSettings

log = logging.getLogger(__name__)
LATENCY_SLACK_S = 0.005  # a p99 this much above the old one's is never a regression
# (the histogram's bins are 19% wide: a p99 is known to within a bin)


@dataclass
class Stats:
    requests: int
    errors: float  # shares
    empty: float
    p99_s: float


@dataclass
class _Watching:
    version: str
    previous: str
    since: float
    before: Stats


BINS = 64  # latency histogram: bin i holds latencies up to 0.25 ms x 2^((i + 1) / 4)


def _bin(latency_s: float) -> int:
    ms = latency_s * 1000
    return 0 if ms <= 0.25 else min(BINS - 1, int(4 * math.log2(ms / 0.25)))


def _upper_s(index: int) -> float:
    return 0.25 * 2 ** ((index + 1) / 4) / 1000


class Watch:
    """Per-version counts by second (requests, failures, empty answers, a latency histogram):
    recording is a few increments, a verdict sums at most ``window_s`` seconds."""

    def __init__(self, settings: WatchSettings, clock: Callable[[], float] = time.monotonic):
        self.settings, self.clock = settings, clock
        self._seconds: dict[str, dict[int, list[Any]]] = {}  # version -> second -> counts
        self._lock = threading.Lock()
        self.watching: _Watching | None = None

    def record(self, version: str, latency_s: float, failed: bool, empty: bool) -> None:
        second = int(self.clock())
        counts = self._seconds.setdefault(version, {}).get(second)
        if counts is None:
            counts = [0, 0, 0, [0] * BINS]
            self._seconds[version][second] = counts
            self._prune(second)
        counts[0] += 1
        counts[1] += failed
        counts[2] += empty
        counts[3][_bin(latency_s)] += 1

    def _prune(self, second: int) -> None:
        """Forget seconds older than two windows (and versions with none left)."""
        oldest = second - 2 * max(1, int(self.settings.window_s)) - 1
        for version in list(self._seconds):
            by_second = self._seconds[version]
            for old in [s for s in by_second if s < oldest]:
                del by_second[old]
            if not by_second:
                del self._seconds[version]

    def start(self, version: str, previous: str | None) -> None:
        """A reload swapped ``previous`` for ``version``: watch it (no-op when off)."""
        with self._lock:
            self.watching = None
            if previous is None or self.settings.window_s <= 0 or version == previous:
                return
            now = self.clock()
            before = self._stats(previous, now - self.settings.window_s, now)
            if before.requests < self.settings.min_requests:
                return  # too little traffic before to compare with
            self.watching = _Watching(version, previous, now, before)

    def stop(self) -> None:
        with self._lock:
            self.watching = None

    def verdict(self) -> str | None:
        """Why the watched version should be rolled back, or None (also when not watching)."""
        with self._lock:
            watching = self.watching
            if watching is None:
                return None
            now = self.clock()
            if now - watching.since > self.settings.window_s:
                self.watching = None
                return None
            after = self._stats(watching.version, watching.since, now)
            if after.requests < self.settings.min_requests:
                return None
            before, s = watching.before, self.settings
            reason = None
            if after.errors > before.errors + s.max_error_increase:
                reason = f"error share {after.errors:.1%} against {before.errors:.1%} before"
            elif after.p99_s > max(before.p99_s * s.max_p99_ratio, before.p99_s + LATENCY_SLACK_S):
                reason = (
                    f"p99 {after.p99_s * 1000:.1f} ms against {before.p99_s * 1000:.1f} ms before"
                )
            elif after.empty > before.empty + s.max_empty_increase:
                reason = (
                    f"empty or fallback answers {after.empty:.1%} against {before.empty:.1%} before"
                )
            if reason is None:
                return None
            self.watching = None
            return (
                f"snapshot {watching.version} over {after.requests} requests: {reason} "
                f"({watching.previous}, {before.requests} requests)"
            )

    def _stats(self, version: str, start: float, stop: float) -> Stats:
        """Counts of ``version`` in the whole seconds from ``start`` to ``stop``."""
        by_second = dict(self._seconds.get(version, {}))
        rows = [c for s, c in by_second.items() if int(start) <= s <= int(stop)]
        requests = sum(c[0] for c in rows)
        if not requests:
            return Stats(0, 0.0, 0.0, 0.0)
        hist = np.sum([c[3] for c in rows], axis=0)
        p99 = int(np.searchsorted(np.cumsum(hist), 0.99 * requests))
        return Stats(
            requests,
            sum(c[1] for c in rows) / requests,
            sum(c[2] for c in rows) / requests,
            _upper_s(p99),
        )


class Guard:
    """The app's watch task: every ``every_s``, a verdict, and a rollback on one."""

    def __init__(self, watch: Watch, rollback: Callable[[], object],
                 on_rollback: Callable[[], None], every_s: float = 1.0):  # fmt: skip
        self.watch, self.rollback, self.on_rollback = watch, rollback, on_rollback
        self.every_s = every_s

    async def check(self) -> str | None:
        """One verdict; rolls back on one and returns why (None: nothing to do)."""
        reason = self.watch.verdict()
        if reason is None:
            return None
        log.error("rolling back: %s", reason)
        try:
            await run_in_threadpool(self.rollback)
        except Exception:  # e.g. nothing to roll back to any more; the next swap is watched
            log.exception("the automatic rollback failed")
            return None
        self.on_rollback()
        return reason

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.check()
