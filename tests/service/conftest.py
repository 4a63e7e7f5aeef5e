"""Fixtures of the service tests: two snapshots of a tiny model, apps and clients over them."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from index_builder.snapshot import LoadedSnapshot, load_snapshot
from service.app import create_app
from service.cache import LocalEmbeddingCache
from service.settings import Settings
from tests.service.client import AppClient
from tests.service.fixtures import ADMIN_TOKEN, copy_snapshots, no_recall_env, shared_snapshots

__all__ = ["no_recall_env"]  # autouse: settings come from the tests, not RECALL_* vars


@pytest.fixture(scope="session")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """(root, [older version, newer version]); read-only, copy before changing files."""
    return shared_snapshots(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def newest(snapshots: tuple[Path, list[str]]) -> LoadedSnapshot:
    """The snapshot an app over the shared root serves, loaded for use as an oracle."""
    root, versions = snapshots
    return load_snapshot(root, versions[-1])


@pytest.fixture
def private(snapshots: tuple[Path, list[str]], tmp_path: Path) -> tuple[Path, list[str]]:
    """A copy of both snapshots this test may damage."""
    root, versions = snapshots
    return copy_snapshots(root, tmp_path / "snapshots"), versions


def make_settings(root: Path, **overrides: Any) -> Settings:
    """Test settings: no .env file, admin token set, in-process cache unless overridden."""
    # No refusal by queue age: in-process requests are slow, and a test must not depend on it
    # (tests/service/test_admission.py sets it with a clock of its own).
    # A fleet of its own (with a Redis): no fleet version left by another test decides. No
    # watch after a reload (test_watch.py turns it on): latency on a busy machine is noise.
    fleet = {"key_prefix": f"test-fleet:{secrets.token_hex(4)}"}
    values: dict[str, Any] = {"snapshots": root, "admin_token": ADMIN_TOKEN, "redis_url": None,
                              "batch": {"shed_after_ms": 10_000.0,
                                        "standing_after_ms": 60_000.0},
                              "fleet": fleet, "watch": {"window_s": 0.0}}  # fmt: skip
    return Settings(_env_file=None, **{**values, **overrides})  # type: ignore[call-arg]


@pytest.fixture
def client(snapshots: tuple[Path, list[str]]) -> Iterator[AppClient]:
    """A client of an app over the shared snapshots, with an in-process cache."""
    app = create_app(make_settings(snapshots[0]), cache=LocalEmbeddingCache())
    with AppClient(app) as client:
        yield client


@pytest.fixture
def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
