"""bench/load.py's sweep: when it stops, what it reports, and how a cut-short sweep is marked."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_load", BENCH / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(rate: float, p99: float, errors: int = 0, achieved: float | None = None) -> dict[str, Any]:
    return {"rate": rate, "p99": p99, "errors": errors, "achieved": achieved or rate}


def test_sweep_grows_the_rate_until_two_steps_in_a_row_fail(load: ModuleType) -> None:
    p99 = {400: 2.0, 500: 3.0, 625: 20.0, 781: 4.0, 976: 30.0, 1220: 40.0}
    asked: list[float] = []

    def run(rate: float) -> dict[str, Any]:
        asked.append(rate)
        return row(rate, p99[int(rate)])

    best, rows, cut = load.sweep(run, 400.0, 15.0)
    assert asked == [400, 500, 625, 781, 976, 1220]  # one failing step (625) does not end it
    assert (best, cut) == (781, False)
    assert len(rows) == 6


def test_a_step_with_errors_or_a_shortfall_in_rate_fails(load: ModuleType) -> None:
    assert load.passes(row(100, 1.0), 15.0)
    assert not load.passes(row(100, 1.0, errors=1), 15.0)
    assert not load.passes(row(100, 1.0, achieved=97.0), 15.0)
    assert not load.passes(row(100, 15.1), 15.0)


def test_a_sweep_that_runs_out_of_cold_users_reports_a_lower_bound(load: ModuleType) -> None:
    def run(rate: float) -> dict[str, Any]:
        if rate > 600:
            raise load.UsersUsedUp("cold users used up")
        return row(rate, 1.0)

    best, rows, cut = load.sweep(run, 400.0, 15.0)
    assert (best, cut, len(rows)) == (500, True, 2)


def test_cold_users_are_handed_out_once_and_then_run_out(load: ModuleType) -> None:
    mixes = load.Mixes(users=5, items=10, k=3, warm_users=2)
    stream = mixes.stream("cold")
    for _ in range(3):
        next(stream)
    with pytest.raises(load.UsersUsedUp):
        next(stream)
