"""The snapshots directory: list versions, stage a new one, publish by rename, prune old ones.

Only folders named by a version count. A build writes into ``.tmp-<version>-<random>`` and
renames it to ``<version>`` when complete; pruning renames to ``.del-...`` before deleting.
Dot-folders are never listed, and the next build removes stale ones under ``.build.lock``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from index_builder.manifest import (
    VERSION_PATTERN,
    Manifest,
    SnapshotExistsError,
    SnapshotInvalidError,
    check_version,
    verify_snapshot,
)

log = logging.getLogger(__name__)
LOCK = ".build.lock"


@dataclass
class SnapshotStatus:
    """One version folder: ``status`` is valid, incomplete (no manifest) or corrupt."""

    version: str
    path: Path
    status: str
    problem: str | None = None
    manifest: Manifest | None = None


def _status(path: Path, verify: bool) -> SnapshotStatus:
    try:
        manifest = verify_snapshot(path, checksums=verify)
    except SnapshotInvalidError as exc:
        kind = "incomplete" if exc.code == "missing_manifest" else "corrupt"
        return SnapshotStatus(path.name, path, kind, f"{exc.code}: {exc}")
    except OSError as exc:  # unreadable (permissions, a folder where a file should be, I/O)
        problem = f"unreadable: {exc.strerror or exc} ({exc.filename or path})"
        return SnapshotStatus(path.name, path, "corrupt", problem)
    return SnapshotStatus(path.name, path, "valid", None, manifest)


def list_snapshots(root: Path, verify: bool = True) -> list[SnapshotStatus]:
    """Version folders under ``root``, newest first; ``verify=False`` skips the checksums
    (sizes and the manifest are still checked)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        _status(path, verify)
        for path in root.iterdir()
        if path.is_dir() and VERSION_PATTERN.fullmatch(path.name)
    ]

    def order(status: SnapshotStatus) -> tuple[str, str, str]:
        created = str(status.manifest.created or "") if status.manifest else ""
        return status.version[:16], created, status.version

    return sorted(found, key=order, reverse=True)


def newest_valid(root: Path) -> str | None:
    """The newest version whose every checksum matches, or None."""
    return next((s.version for s in list_snapshots(root) if s.status == "valid"), None)


@contextmanager
def staging(root: Path, version: str) -> Iterator[Path]:
    """Hold ``root/.build.lock``, clean stale temp folders, yield a fresh temp folder.

    The temp folder is removed if the block raises; publish it with :func:`publish`.
    """
    check_version(version)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one writer per snapshots dir; released on exit/death
        clean_stale(root)
        tmp = root / f".tmp-{version}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already when published


def clean_stale(root: Path) -> list[str]:
    """Remove leftovers of killed builds and prunes (call only while holding the lock)."""
    removed = []
    for path in Path(root).iterdir():
        if path.is_dir() and path.name.startswith((".tmp-", ".del-")):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    if removed:
        log.info("removed stale folders %s from %s", removed, root)
    return removed


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp_dir: Path, root: Path, version: str) -> Path:
    """Rename the finished ``tmp_dir`` to ``root/version``; never replaces an existing one."""
    check_version(version)
    target = Path(root) / version
    if target.exists():
        raise SnapshotExistsError(f"{target} already exists; snapshots are never overwritten")
    for path in Path(tmp_dir).iterdir():
        _fsync(path)
    _fsync(Path(tmp_dir))
    os.rename(tmp_dir, target)
    _fsync(Path(root))
    log.info("published snapshot %s", target)
    return target


def prune(root: Path, keep: int, protect: str | None = None) -> list[str]:
    """Delete valid versions beyond the newest ``keep`` (never ``protect``); returns them.

    Every checksum is verified, so a bit-rotten version never counts towards ``keep``;
    corrupt and incomplete folders are left for an operator to inspect (logged).
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    statuses = list_snapshots(root)
    for status in statuses:
        if status.status != "valid":
            log.warning("leaving %s snapshot %s: %s", status.status, status.path, status.problem)
    valid = [s for s in statuses if s.status == "valid"]
    removed = []
    for status in valid[keep:]:
        if status.version == protect:
            continue
        doomed = status.path.with_name(f".del-{status.version}-{secrets.token_hex(4)}")
        os.rename(status.path, doomed)  # disappears from listings at once
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(status.version)
    if removed:
        log.info("pruned snapshots %s (keep %d)", removed, keep)
    return removed
