"""Reliability fixtures: two snapshots with disjoint item ids, and `recall serve` processes.

Snapshot "a" is built from a tiny synthetic dataset whose item ids are "a1".."a120", snapshot
"b" from one whose ids are "b1".."b120", so every answer shows which snapshot produced it.
Servers are real `recall serve` subprocesses on free ports, talking HTTP on 127.0.0.1.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from index_builder.build import BuildOptions, build_snapshot
from index_builder.gates import PUBLISH_GATES
from models.experiment import run_training
from models.synth import write_synthetic
from tests.integration.conftest import (
    REDIS_URL,
    RedisProcess,
    free_port,
    key_prefix,
    own_redis,
    real_redis,
    wait_ready,
)
from tests.service.fixtures import ADMIN_TOKEN, DATASET, ROOT, no_recall_env, tiny_config

# fixtures shared with tests/integration (autouse: settings come from the tests)
__all__ = ["REDIS_URL", "RedisProcess", "key_prefix", "no_recall_env", "own_redis", "real_redis"]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
AUDITED = Path(__file__).with_name("audited_serve.py")


def prefix_item_ids(data_dir: Path, prefix: str) -> None:
    """Rewrite the item ids of a synthetic dataset (``.item`` and ``.inter``) as prefix + id."""
    for suffix, column in (("item", 0), ("inter", 1)):
        path = data_dir / f"{DATASET}.{suffix}"
        header, *rows = path.read_text().splitlines()
        out = [header]
        for row in rows:
            fields = row.split("\t")
            fields[column] = prefix + fields[column]
            out.append("\t".join(fields))
        path.write_text("\n".join(out) + "\n")


def build_disjoint(base: Path) -> tuple[Path, dict[str, str]]:
    """Snapshots of two tiny models, item ids "a…" and "b…", in ``base/snapshots``."""
    root = base / "snapshots"
    versions = {}
    for prefix, seed in (("a", 1), ("b", 2)):
        data_dir = write_synthetic(
            base / prefix / DATASET, 60, 120, 1500, seed=seed, clusters=4, progress=False
        )
        prefix_item_ids(data_dir, prefix)
        artifact = base / prefix / "artifact"
        run_training(tiny_config(data_dir), "leave-last-out", artifact, data_dir=data_dir,
                     progress=False)  # fmt: skip
        # tiny models for fault tests: whatever their quality, they are published and served
        options = BuildOptions(index="flat", k=10, tuning_users=20, progress=False,
                               allow=PUBLISH_GATES)  # fmt: skip
        versions[prefix] = build_snapshot(artifact, root, options)
    return root, versions


@pytest.fixture(scope="session")
def disjoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """(root, {"a": version, "b": version}); read-only, copy before changing files."""
    return build_disjoint(tmp_path_factory.mktemp("disjoint"))


def copy_versions(root: Path, dest: Path, versions: list[str]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for version in versions:
        shutil.copytree(root / version, dest / version)
    return dest


@dataclass
class Server:
    """A running `recall serve`: its base URL, process and log file."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, timeout_s: float = 10.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout_s)

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)


def start_server(snapshots: Path, folder: Path, audit_log: Path | None = None,
                 port: int | None = None, **env: str) -> Server:  # fmt: skip
    """`recall serve` on ``port`` (default: a free one) with the admin token set; returns
    once /readyz is 200.

    ``env`` adds RECALL_* settings; ``audit_log`` runs it under ``audited_serve.py``, which
    writes every path the process opens to that file.
    """
    port = port or free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RECALL_")}
    # no quality-regression gate (the fixtures' tiny models swap back and forth) and no
    # refusal by queue age (a stall of the loop, e.g. during a reload, would 503): these
    # tests are about faults, not overload, and must not depend on timing
    environ.update({"RECALL_ADMIN_TOKEN": ADMIN_TOKEN, "RECALL_LOG_LEVEL": "INFO",
                    "RECALL_BATCH__SHED_AFTER_MS": "10000",
                    "RECALL_BATCH__STANDING_AFTER_MS": "60000",
                    "RECALL_GATES__QUALITY_MARGIN": "1.0",
                    "RECALL_WATCH__WINDOW_S": "0",  # no automatic rollback by latency
                    # a fleet of its own: a fleet version left in Redis by another server
                    # must not decide what this one serves
                    "RECALL_FLEET__KEY_PREFIX": f"test-fleet:{secrets.token_hex(4)}",
                    **env})  # fmt: skip
    args = ["serve", "--snapshots", str(snapshots), "--host", "127.0.0.1", "--port", str(port)]
    if audit_log is not None:
        environ["AUDIT_LOG"] = str(audit_log)
        command = [sys.executable, str(AUDITED), *args]
    else:
        command = [sys.executable, "-m", "recall", *args]
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"server-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=environ, cwd=ROOT, stdout=out, stderr=out)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_ready(server.url, process, log)
    except BaseException:
        process.kill()
        process.wait(10)
        raise
    return server


def module_server(name: str) -> Any:
    """A module-scoped ``server`` fixture: one `recall serve` over snapshot "a" and "b" for all
    of a module's tests (``server = module_server("bad-input")``)."""

    @pytest.fixture(scope="module")
    def server(
        disjoint: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[Server]:
        started = start_server(disjoint[0], tmp_path_factory.mktemp(name))
        yield started
        started.stop()

    return server


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """``serve(snapshots, **env)`` starts a server that is stopped after the test."""
    started: list[Server] = []

    def make(snapshots: Path, audit_log: Path | None = None, **env: str) -> Server:
        server = start_server(snapshots, tmp_path / "logs", audit_log, **env)
        started.append(server)
        return server

    yield make
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)
