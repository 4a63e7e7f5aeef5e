"""With no loadable snapshot the process is alive but not ready, and says what to do."""

from __future__ import annotations

from pathlib import Path

from service.app import create_app
from service.cache import LocalEmbeddingCache
from tests.service.client import AppClient
from tests.service.conftest import make_settings
from tests.service.fixtures import copy_snapshots


def test_without_snapshots_health_is_ok_but_ready_and_recall_are_503(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path / "missing"), cache=LocalEmbeddingCache())
    with AppClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "no_snapshot"
        calls = [
            client.post("/v1/recall", json={"user_id": "1"}),
            client.post("/v1/recall/batch", json={"requests": [{}]}),
            client.get("/v1/items/1/similar"),
        ]
        for response in calls:
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "no_snapshot"
            assert "recall build-index" in response.json()["error"]["message"]


def test_reload_picks_up_a_snapshot_published_after_start_up(
    tmp_path: Path, snapshots: tuple[Path, list[str]], admin: dict[str, str]
) -> None:
    root = tmp_path / "snapshots"
    root.mkdir()
    app = create_app(make_settings(root), cache=LocalEmbeddingCache())
    with AppClient(app) as client:
        empty = client.post("/admin/reload", headers=admin)
        assert (empty.status_code, empty.json()["error"]["code"]) == (409, "snapshot_not_found")
        copy_snapshots(snapshots[0], root, snapshots[1][:1])
        loaded = client.post("/admin/reload", headers=admin).json()
        assert loaded["changed"] is True and loaded["previous"] is None
        assert client.get("/readyz").json()["snapshot"] == snapshots[1][0]
