"""A circuit breaker: stop calling a failing dependency for a while, then try once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class CircuitBreaker:
    """Closed -> open after ``failures`` consecutive failures -> half-open after ``cooldown_s``.

    Half-open lets one call through: success closes the breaker, failure opens it again. A
    failure recorded as ``costly`` (a call that waited out its whole timeout) opens it at once:
    the next calls would each wait as long, and on an event loop every such wait stalls all
    requests, so counting to ``failures`` would cost that many timeouts back to back.
    """

    def __init__(
        self,
        failures: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
        name: str = "redis",
    ):
        self.threshold, self.cooldown_s, self.clock, self.name = failures, cooldown_s, clock, name
        self.failures = 0
        self.opened_at: float | None = None
        self._trial_at: float | None = None  # when the half-open trial call started
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            if self.opened_at is None:
                return True
            now = self.clock()
            if now - self.opened_at < self.cooldown_s:
                return False
            if self._trial_at is not None and now - self._trial_at < self.cooldown_s:
                return False  # a trial is under way (one that never reports expires)
            self._trial_at = now  # half-open: this caller is the one trial
            return True

    def record(self, ok: bool, costly: bool = False) -> None:
        with self._lock:
            self._trial_at = None
            if ok:
                if self.opened_at is not None:
                    log.info("%s answers again: circuit closed", self.name)
                self.failures, self.opened_at = 0, None
                return
            self.failures += 1
            if self.failures >= self.threshold or costly or self.opened_at is not None:
                if self.opened_at is None:
                    log.warning(
                        "%s failed %d times in a row%s: circuit open",
                        self.name, self.failures, " (timed out)" if costly else "",
                    )  # fmt: skip
                self.opened_at = self.clock()

    @property
    def healthy(self) -> bool:
        return self.failures == 0 and self.opened_at is None
