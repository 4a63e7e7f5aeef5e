"""Integration fixtures: the real Redis at 127.0.0.1:6379, private redis-servers to kill,
and the shared tiny snapshots."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.service.fixtures import no_recall_env, shared_snapshots

__all__ = ["no_recall_env"]  # autouse: settings come from the tests, not RECALL_* vars

REDIS_URL = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: object, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def wait_ready(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until ``base``/readyz answers 200; fails with the server's log if the process exits."""

    def ready() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 120, "the server to be ready")


@contextlib.contextmanager
def recall_serve(snapshots: Path, folder: Path, **env: str) -> Iterator[str]:
    """Base URL of `recall serve` over ``snapshots`` on a free port, with ``env`` as its
    RECALL_* settings; stopped afterwards (its log is ``folder/server.log``)."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RECALL_")}
    environ.update(env)
    log = (folder / "server.log").open("wb")
    command = [sys.executable, "-m", "recall", "serve", "--snapshots", str(snapshots),
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, env=environ, cwd=folder, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, folder / "server.log")
        yield base
    finally:
        process.terminate()
        process.wait(30)
        log.close()


@pytest.fixture(scope="session")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    return shared_snapshots(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def real_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("no Redis at 127.0.0.1:6379; start one: redis-server --port 6379")
    yield client
    client.close()


@pytest.fixture
def key_prefix(real_redis: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"recall-test-{uuid.uuid4().hex[:12]}:uvec"
    yield prefix
    keys = list(real_redis.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        real_redis.delete(*keys)


class RedisProcess:
    """A private redis-server (no persistence) that a test may kill, pause and restart."""

    def __init__(self, folder: Path):
        self.port, self.folder = free_port(), folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.folder)]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        probe = redis.Redis(port=self.port, socket_timeout=0.2, socket_connect_timeout=0.2)

        def up() -> bool:
            try:
                return bool(probe.ping())
            except redis.RedisError:
                return False

        wait_until(up, 10, f"redis-server on port {self.port}")
        probe.close()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.resume()
        server.kill()
