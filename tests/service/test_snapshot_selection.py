"""Which snapshot a default reload or a start-up picks, and snapshots that cannot be read."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from index_builder.manifest import new_version, seal_manifest
from tests.service.test_admin import app_client, serving

FUTURE = "20990101T000000Z-0000abcd"


def rename(root: Path, version: str, new: str) -> None:
    (root / version).rename(root / new)
    manifest = json.loads((root / new / "manifest.json").read_text())
    manifest["version"] = new
    (root / new / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))


def break_contents(folder: Path) -> None:
    """Right checksums, a dimension that disagrees with the model: it fails to load."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["dim"] += 1
    (folder / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))


def test_a_default_reload_falls_back_past_a_newest_snapshot_that_fails_to_load(
    private: tuple[Path, list[str]],
    admin: dict[str, str],
) -> None:
    root, (older, newer) = private
    shutil.rmtree(root / newer)
    with app_client(root) as client:
        assert serving(client) == older
        # a newer copy that loads, then a newest one that does not
        now = datetime.now(UTC)
        loads, fails = (new_version(now + timedelta(seconds=s)) for s in (60, 120))
        for version in (loads, fails):
            shutil.copytree(root / older, root / "scratch")
            rename(root, "scratch", version)
        break_contents(root / fails)
        response = client.post("/admin/reload", headers=admin)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["current"] == loads
        assert f"{fails} (dim_mismatch)" in body["message"]


def test_a_default_reload_that_finds_nothing_loadable_keeps_serving_and_names_the_check(
    private: tuple[Path, list[str]],
    admin: dict[str, str],
) -> None:
    root, (older, newer) = private
    with app_client(root) as client:
        assert serving(client) == newer
        shutil.rmtree(root / newer)  # served from memory, gone from disk
        break_contents(root / older)
        response = client.post("/admin/reload", headers=admin)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "dim_mismatch"
        assert serving(client) == newer


def test_a_future_dated_snapshot_is_never_chosen_by_default(
    private: tuple[Path, list[str]],
    admin: dict[str, str],
) -> None:
    root, (older, newer) = private
    rename(root, older, FUTURE)
    with app_client(root) as client:
        assert serving(client) == newer  # not the far-future name
        assert client.post("/admin/reload", headers=admin).json()["changed"] is False
        by_name = client.post("/admin/reload", headers=admin, json={"version": FUTURE})
        assert by_name.status_code == 200 and by_name.json()["current"] == FUTURE


def test_reloading_the_served_version_after_its_folder_was_deleted_is_409(
    private: tuple[Path, list[str]],
    admin: dict[str, str],
) -> None:
    root, (_, newer) = private
    with app_client(root) as client:
        shutil.rmtree(root / newer)
        response = client.post("/admin/reload", headers=admin, json={"version": newer})
        assert response.status_code == 409
        error = response.json()["error"]
        assert error["code"] == "snapshot_not_found" and "gone from disk" in error["message"]
        assert serving(client) == newer  # still served from memory


def test_an_unreadable_snapshot_is_listed_corrupt_and_skipped_at_start_up(
    private: tuple[Path, list[str]],
    admin: dict[str, str],
) -> None:
    root, (older, newer) = private
    # a folder where a file should be: unreadable as a file even to root
    (root / newer / "manifest.json").unlink()
    (root / newer / "manifest.json").mkdir()
    with app_client(root) as client:
        assert serving(client) == older
        listing = client.get("/admin/snapshots", headers=admin)
        assert listing.status_code == 200
        entry = next(s for s in listing.json()["snapshots"] if s["version"] == newer)
        assert entry["status"] == "corrupt" and entry["problem"].startswith("unreadable")


def test_the_anonymous_503_does_not_show_the_snapshots_path(tmp_path: Path) -> None:
    root = tmp_path / "secret-mount" / "snapshots"
    with app_client(root) as client:
        response = client.post("/v1/recall", json={"user_id": "1"})
    assert response.status_code == 503
    assert "secret-mount" not in response.text


def test_a_client_that_goes_away_mid_body_logs_no_stack_trace(
    snapshots: tuple[Path, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    from service.app import create_app
    from service.cache import LocalEmbeddingCache
    from tests.service.conftest import make_settings

    app = create_app(make_settings(snapshots[0]), cache=LocalEmbeddingCache())
    sent: list[dict] = []

    async def run() -> None:
        async with app.router.lifespan_context(app) as state:
            messages = iter([{"type": "http.request", "body": b'{"requests": [', "more_body": True},
                             {"type": "http.disconnect"}])  # fmt: skip

            async def receive() -> dict:
                return next(messages)

            async def send(message: dict) -> None:
                sent.append(message)

            scope = {"type": "http", "method": "POST", "path": "/v1/recall/batch",
                     "raw_path": b"/v1/recall/batch", "query_string": b"", "root_path": "",
                     "headers": [(b"content-type", b"application/json")],
                     "state": dict(state or {})}  # fmt: skip
            await app(scope, receive, send)

    with caplog.at_level(logging.DEBUG):
        asyncio.run(run())
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    assert not [m for m in sent if m.get("status", 0) >= 500]
