"""The watch after a reload (service.watch): a snapshot that answers worse than the one before
is rolled back; one that answers alike is kept."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index_builder.snapshot import load_snapshot
from index_builder.tables import read_users, write_users
from service.settings import WatchSettings
from service.watch import Watch
from tests.index_builder.helpers import resum
from tests.service.test_admin import app_client, serving
from tests.service.test_gates import variant


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def traffic(watch: Watch, clock: Clock, version: str, n: int, **kind: Any) -> None:
    """``n`` answers of ``version`` over ``n / 10`` seconds."""
    for i in range(n):
        latency = kind.get("latency_s", 0.002)
        watch.record(
            version, latency, i < n * kind.get("failed", 0.0), i < n * kind.get("empty", 0.0)
        )
        clock.now += 0.1


SETTINGS = WatchSettings(window_s=60, min_requests=50)


@pytest.mark.parametrize(
    ("after", "reason"),
    [
        ({}, None),
        ({"empty": 0.1}, None),  # within max_empty_increase (0.2)
        ({"empty": 0.8}, "empty or fallback answers 80.0%"),
        ({"failed": 0.05}, "error share 5.4% against 0.0%"),
        ({"latency_s": 0.004}, None),  # 2x, but within the 5 ms slack
        ({"latency_s": 0.050}, "p99"),
    ],
)
def test_a_verdict_compares_the_new_version_with_the_window_before(
    after: dict[str, float], reason: str | None
) -> None:
    clock = Clock()
    watch = Watch(SETTINGS, clock)
    traffic(watch, clock, "old", 200, empty=0.05)
    watch.start("new", "old")
    traffic(watch, clock, "new", 30, **after)
    assert watch.verdict() is None  # fewer than min_requests so far
    traffic(watch, clock, "new", 100, **after)
    verdict = watch.verdict()
    if reason is None:
        assert verdict is None
    else:
        assert verdict is not None and reason in verdict and "new" in verdict
        assert watch.verdict() is None  # one verdict per watch


def test_no_watch_after_a_rollback_past_the_window_or_without_traffic_before() -> None:
    clock = Clock()
    watch = Watch(SETTINGS, clock)
    traffic(watch, clock, "old", 200)
    watch.start("new", "old")
    watch.stop()  # a rollback
    traffic(watch, clock, "new", 100, empty=1.0)
    assert watch.verdict() is None
    watch.start("newer", "new")
    clock.now += 61  # the window has passed
    traffic(watch, clock, "newer", 100, empty=1.0)
    assert watch.verdict() is None
    quiet = Watch(SETTINGS, Clock())
    quiet.start("new", "old")  # nothing answered before: nothing to compare with
    assert quiet.watching is None


def test_a_snapshot_that_answers_most_users_with_the_fallback_is_rolled_back(
    private: tuple[Path, list[str]], admin: dict[str, str]
) -> None:
    """Its user table renamed every user but the gates' sample: it passes every gate, and the
    known users of the traffic get the popularity fallback from it."""
    root, (older, newer) = private
    with app_client(
        root, watch={"window_s": 600, "min_requests": 20, "check_every_s": 3600}
    ) as client:
        assert serving(client) == newer
        users = [str(u) for u in load_snapshot(root, newer).user_row][:40]

        def answer_all() -> list[str]:
            return [client.post("/v1/recall", json={"user_id": u, "k": 3}).json()["user"]["source"]
                    for u in users]  # fmt: skip

        assert "fallback" not in answer_all()  # the window before the swap
        version = variant(root, newer)
        snapshot = load_snapshot(root, version)
        assert snapshot.parity is not None
        sampled = set(snapshot.parity[0].tolist())
        table = read_users(root / version)
        renamed = np.array([u if u in sampled else f"gone-{u}" for u in table.user_ids.tolist()],
                           dtype=object)  # fmt: skip
        write_users(root / version, replace(table, user_ids=renamed))
        resum(root / version)
        response = client.post("/admin/reload", json={"version": version}, headers=admin)
        assert response.status_code == 200, response.text
        sources = answer_all()
        assert sources.count("fallback") > len(users) // 2
        guard = client.state["services"].guard  # the check the app's watch task runs
        reason = client.portal.call(guard.check)
        assert reason is not None and "empty or fallback answers" in reason
        assert serving(client) == newer
        metrics = client.get("/metrics").text
        assert "recall_auto_rollbacks_total 1.0" in metrics
