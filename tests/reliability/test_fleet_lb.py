"""A fleet behind a real load balancer: two `recall serve` replicas sharing a Redis behind
haproxy (Debian's, installed by `make test`), under continuous load through it, go through a
fleet reload, a rolling restart and a rollback. No answer is anything but 200, and once the
fleet has converged after each change every answer carries the fleet's version."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import free_port
from tests.reliability.conftest import ADMIN, Server, copy_versions, start_server

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
pytestmark = pytest.mark.skipif(
    not Path(HAPROXY).exists(), reason="haproxy is not installed (`make test` installs it)"
)

CONFIG = """
global
    maxconn 512
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    # a request a stopping replica refuses or drops goes to the other one (buffered bodies,
    # so a POST can be sent again)
    option http-buffer-request
    retries 3
    option redispatch 1
    retry-on all-retryable-errors
frontend recall
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    # a replica is out after three failed checks (a busy machine answers a check late); a
    # stopped one refuses connections at once, and those requests are sent again elsewhere
    timeout check 5s
    default-server inter 200ms fall 3 rise 1
{servers}
"""


class Load:
    """Recall requests through the balancer, one after another, until stopped; every answer
    is kept with the time it came back."""

    def __init__(self, url: str):
        self.url = url
        self.answers: list[tuple[float, int, str | None]] = []  # (monotonic, status, snapshot)
        self.answered = threading.Condition()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0) as client:
            user = 0
            while not self.stopped.is_set():
                user += 1
                try:
                    response = client.post("/v1/recall", json={"user_id": str(user % 40), "k": 5})
                    body = response.json() if response.status_code == 200 else {}
                    answer = (time.monotonic(), response.status_code, body.get("snapshot"))
                except httpx.HTTPError as exc:
                    answer = (time.monotonic(), 0, repr(exc))
                with self.answered:
                    self.answers.append(answer)
                    self.answered.notify_all()

    def wait_for_more(self, n: int = 20) -> None:
        """Until ``n`` more answers came back (the load is flowing)."""
        with self.answered:
            target = len(self.answers) + n
            moved = self.answered.wait_for(lambda: len(self.answers) >= target, timeout=60)
        assert moved, "the load stopped moving"

    def since(self, moment: float) -> list[tuple[float, int, str | None]]:
        return [a for a in self.answers if a[0] > moment]


def wait_until(check: Any, what: str, timeout_s: float = 60.0) -> None:
    """Until ``check()`` (HTTP calls to the replicas, each a round trip) holds."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"


def serves(server: Server) -> str | None:
    try:
        return httpx.get(f"{server.url}/readyz", timeout=5).json().get("snapshot")
    except (httpx.HTTPError, ValueError):
        return None


@pytest.fixture()
def fleet(
    disjoint: tuple[Path, dict[str, str]], tmp_path: Path
) -> Iterator[tuple[list[Server], dict[str, str], str, dict[str, Any]]]:
    """Two replicas (own ports, shared snapshots folder and fleet key) behind haproxy."""
    root, versions = disjoint
    snapshots = copy_versions(root, tmp_path / "snapshots", list(versions.values()))
    env = {"RECALL_REDIS_URL": "redis://127.0.0.1:6379/0",
           "RECALL_FLEET__KEY_PREFIX": f"test-fleet:{secrets.token_hex(4)}",
           "RECALL_FLEET__POLL_S": "0.2"}  # fmt: skip
    ports = [free_port(), free_port()]
    servers = [start_server(snapshots, tmp_path / "logs", port=p, **env) for p in ports]
    lb_port = free_port()
    lines = "\n".join(f"    server r{i} 127.0.0.1:{p} check" for i, p in enumerate(ports))
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG.format(port=lb_port, servers=lines))
    pidfile = tmp_path / "haproxy.pid"
    # -D: the command returns once haproxy listens (its daemon runs on)
    subprocess.run([HAPROXY, "-D", "-p", str(pidfile), "-f", str(config)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{lb_port}"
    assert _answers(url)
    restart = {"snapshots": snapshots, "folder": tmp_path / "logs", "env": env, "ports": ports}
    try:
        yield servers, versions, url, restart
    finally:
        for pid in pidfile.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)
        for server in servers:
            server.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_reload_rolling_restart_and_rollback_behind_a_balancer_drop_nothing(
    fleet: tuple[list[Server], dict[str, str], str, dict[str, Any]],
) -> None:
    servers, versions, url, restart = fleet
    newest, older = versions["b"], versions["a"]  # built in that order: "b" is the newest
    assert [serves(s) for s in servers] == [newest, newest]
    load = Load(url)
    load.thread.start()
    try:
        load.wait_for_more()
        # 1. a fleet reload, sent to whichever replica the balancer picks
        response = httpx.post(f"{url}/admin/reload", json={"version": older}, headers=ADMIN,
                              timeout=60)  # fmt: skip
        assert response.status_code == 200, response.text
        wait_until(lambda: [serves(s) for s in servers] == [older, older], "the fleet to converge")
        converged = time.monotonic()
        load.wait_for_more()
        assert {a[2] for a in load.since(converged)} == {older}

        # 2. a rolling restart: each replica comes back on the fleet's version, not the newest
        for i, server in enumerate(servers):
            assert server.stop() == 0
            load.wait_for_more()  # the other replica answers meanwhile
            servers[i] = start_server(restart["snapshots"], restart["folder"],
                                      port=restart["ports"][i], **restart["env"])  # fmt: skip
            assert serves(servers[i]) == older
        restarted = time.monotonic()
        load.wait_for_more(40)
        assert {a[2] for a in load.since(restarted)} == {older}

        # 3. a rollback: the replica that gets it goes back, the other follows
        response = httpx.post(f"{url}/admin/rollback", headers=ADMIN, timeout=60)
        assert response.status_code == 200, response.text
        back = response.json()["current"]
        assert back == newest
        wait_until(lambda: [serves(s) for s in servers] == [newest, newest], "the rollback")
        rolled = time.monotonic()
        load.wait_for_more()
        assert {a[2] for a in load.since(rolled)} == {newest}
        fleet_view = httpx.get(f"{url}/admin/fleet", headers=ADMIN, timeout=10).json()
        assert fleet_view["version"] == newest
        assert sorted(r["serving"] for r in fleet_view["replicas"]) == [newest, newest]
    finally:
        load.stopped.set()
        load.thread.join(60)
    statuses = [status for _, status, _ in load.answers]
    assert len(statuses) > 100
    assert set(statuses) == {200}, [a for a in load.answers if a[1] != 200][:5]
