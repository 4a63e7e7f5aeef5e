"""SnapshotHolder: the one mutable reference to the engine being served, and reloads.

Handlers read ``holder.current`` once into a local, so a request finishes on the engine it
started with. A reload loads and verifies a snapshot, warms it up, runs the promotion gates
(``service.promotion``) and only then swaps the reference; any failure leaves the old engine
serving. One reload or rollback at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from index_builder.snapshot import (
    Check,
    SnapshotError,
    check_version,
    list_snapshots,
    load_snapshot,
    version_time,
)
from service.engine import RecallEngine
from service.errors import Code, ServiceError
from service.metrics import Metrics
from service.promotion import check_gates
from service.settings import GateSettings
from service.watch import Watch

log = logging.getLogger(__name__)


FUTURE_SLACK = timedelta(hours=1)  # clock skew between the builder and the service


def candidates(root: Path, verify: bool = True) -> list[str]:
    """Valid versions under ``root``, newest first, without those dated in the future (a
    mistyped or forged name would otherwise win every default reload; logged)."""
    now = datetime.now(UTC)
    found = []
    for status in list_snapshots(root, verify=verify):
        if status.status != "valid":
            log.warning("skipping snapshot %s: %s", status.version, status.problem)
        elif version_time(status.version) > now + FUTURE_SLACK:
            log.warning(
                "skipping snapshot %s: dated in the future; reload it by version to serve it",
                status.version,
            )
        else:
            found.append(status.version)
    return found


@dataclass(frozen=True)
class Swap:
    changed: bool
    current: str | None
    previous: str | None
    message: str


class SnapshotHolder:
    """Current and previous engines over the snapshots under ``root``."""

    def __init__(
        self,
        root: Path,
        metrics: Metrics,
        gates: GateSettings | None = None,
        watch: Watch | None = None,
    ):
        self.root, self.metrics = Path(root), metrics
        self.gates = gates or GateSettings()
        self.watch = watch  # opened on each reload's swap, closed by a rollback
        self.current: RecallEngine | None = None
        self.previous: RecallEngine | None = None
        self._lock = threading.Lock()

    def require(self) -> RecallEngine:
        """The engine to serve this request with; ``no_snapshot`` (503) when none is loaded."""
        engine = self.current
        if engine is None:
            raise ServiceError(
                Code.NO_SNAPSHOT,
                "no snapshot is loaded yet; an operator builds one (`recall build-index`) "
                "and reloads (POST /admin/reload)",
            )
        return engine

    def load_newest(self) -> str | None:
        """Start-up: serve the newest snapshot that loads, skipping corrupt ones."""
        with self._lock:
            for version in candidates(self.root, verify=False):
                try:
                    engine = self._load(version)
                except ServiceError as exc:
                    log.warning("skipping snapshot %s: %s", version, exc.message)
                    continue
                self._swap(engine)
                return engine.version
        log.warning("no loadable snapshot under %s; recall answers 503 until a reload", self.root)
        return None

    def reload(self, version: str | None = None, compare: bool = True) -> Swap:
        """Serve ``version`` (default: the newest snapshot that loads, see ``_reload_newest``);
        blocking, call it off the loop. ``compare=False`` leaves out the comparison with the
        serving snapshot (``quality_regression``): following the fleet or rolling back to a
        version that was already promoted is not a promotion."""
        with self._lock:
            if version is None:
                return self._reload_newest()
            try:
                version = check_version(version)
            except SnapshotError as exc:
                raise self._failed(ServiceError.from_snapshot(exc)) from exc
            current = self.current
            if current is not None and current.version == version:
                if not (self.root / version).is_dir():
                    raise self._failed(
                        ServiceError(
                            Check.NOT_FOUND,
                            f"snapshot {version} is served from memory but its folder is gone "
                            "from disk; reload another version",
                        )
                    )
                return self._state(False, f"snapshot {version} is already being served")
            try:
                engine = self._load(version, compare)
            except ServiceError as exc:
                raise self._failed(exc) from exc
            self._swap(engine)
            return self._state(True, f"now serving {version}")

    def _reload_newest(self) -> Swap:
        """Newest first, the first valid snapshot that loads; one that fails to load is skipped
        (named in the message), one dated in the future is never chosen by default. Stops at
        the served version: no change then."""
        skipped: list[str] = []
        first_failure: ServiceError | None = None
        current = self.current
        for version in candidates(self.root):
            if current is not None and version == current.version:
                note = f"; skipped {', '.join(skipped)}" if skipped else ""
                return self._state(False, f"snapshot {version} is already the newest{note}")
            try:
                engine = self._load(version)
            except ServiceError as exc:
                self._failed(exc)
                first_failure = first_failure or exc
                skipped.append(f"{version} ({exc.code})")
                continue
            self._swap(engine)
            note = f" (skipped {', '.join(skipped)})" if skipped else ""
            return self._state(True, f"now serving {version}{note}")
        if first_failure is not None:
            raise ServiceError(
                first_failure.code,
                f"no snapshot under the snapshots folder loads: {'; '.join(skipped)}; "
                f"first failure: {first_failure.message}",
            )
        raise self._failed(
            ServiceError(
                Check.NOT_FOUND,
                "no valid snapshot in the snapshots folder; build one with `recall build-index`",
            )
        )

    def rollback(self) -> Swap:
        """Serve the previous engine again (the current one becomes previous)."""
        with self._lock:
            target = self.previous
            if target is None:
                raise self._failed(
                    ServiceError(
                        Code.NO_PREVIOUS_SNAPSHOT,
                        "nothing to roll back to: no snapshot was replaced",
                    )
                )
            self._swap(target, watched=False)
            return self._state(True, f"rolled back to {target.version}")

    def _load(self, version: str, compare: bool = True) -> RecallEngine:
        started = time.perf_counter()
        try:
            snapshot = load_snapshot(self.root, version)
        except SnapshotError as exc:
            raise ServiceError.from_snapshot(exc) from exc
        except Exception as exc:
            log.exception("loading snapshot %s failed", version)
            raise ServiceError(
                Check.LOAD_FAILED, f"snapshot {version} failed to load: {exc}"
            ) from exc
        engine = RecallEngine(snapshot)
        try:
            engine.warm_up()
        except Exception as exc:
            log.exception("warming up snapshot %s failed", version)
            raise ServiceError(
                Check.WARMUP_FAILED, f"snapshot {version} failed warm-up: {exc}"
            ) from exc
        try:
            check_gates(engine, self.current if compare else None, self.gates)
        except SnapshotError as exc:
            raise ServiceError.from_snapshot(exc) from exc
        log.info("snapshot %s loaded in %.2fs", version, time.perf_counter() - started)
        return engine

    def _swap(self, engine: RecallEngine, watched: bool = True) -> None:
        self.previous, self.current = self.current, engine
        if self.watch is not None:
            if watched:
                self.watch.start(engine.version, self.previous.version if self.previous else None)
            else:
                self.watch.stop()
        self.metrics.snapshot.info({"version": engine.version})
        self.metrics.reloads.inc()
        log.info(
            "serving snapshot %s (previous %s)",
            engine.version,
            self.previous.version if self.previous else None,
        )

    def _failed(self, exc: ServiceError) -> ServiceError:
        self.metrics.reload_failures.labels(exc.code).inc()
        log.info("reload refused (%s): %s", exc.code, exc.message)
        return exc

    def _state(self, changed: bool, message: str) -> Swap:
        current, previous = self.current, self.previous
        return Swap(
            changed,
            current.version if current else None,
            previous.version if previous else None,
            message,
        )
