"""Admin routes: the token, transactional reloads, rollback, start-up over corrupt snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from index_builder.manifest import seal_manifest
from service.app import create_app
from service.cache import LocalEmbeddingCache
from tests.service.client import AppClient
from tests.service.conftest import make_settings

ROUTES = [("GET", "/admin/snapshots"), ("GET", "/admin/snapshot"),
          ("POST", "/admin/reload"), ("POST", "/admin/rollback")]  # fmt: skip


def app_client(root: Path, **overrides: object) -> AppClient:
    return AppClient(create_app(make_settings(root, **overrides), cache=LocalEmbeddingCache()))


def corrupt(folder: Path, name: str = "index.faiss") -> None:
    """Flip one byte in the middle of a file (same size, different checksum)."""
    path = folder / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def serving(client: AppClient) -> str:
    return client.get("/readyz").json()["snapshot"]


@pytest.mark.parametrize(("method", "url"), ROUTES)
def test_admin_routes_are_off_without_a_configured_token(
    snapshots: tuple[Path, list[str]], method: str, url: str
) -> None:
    with app_client(snapshots[0], admin_token=None) as client:
        response = client.request(method, url, headers={"Authorization": "Bearer anything"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "admin_disabled"
    assert "RECALL_ADMIN_TOKEN" in response.json()["error"]["message"]


@pytest.mark.parametrize(("method", "url"), ROUTES)
def test_admin_routes_need_the_right_bearer_token(client: AppClient, method: str, url: str) -> None:
    missing = client.request(method, url)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    for header in ("Bearer wrong-token-0123456789", "Basic abc"):
        response = client.request(method, url, headers={"Authorization": header})
        assert response.status_code == (403 if header.startswith("Bearer") else 401)


def test_reload_refuses_a_path_as_version_with_bad_version(
    client: AppClient, admin: dict[str, str], snapshots: tuple[Path, list[str]]
) -> None:
    for version in ("../x", "../" + snapshots[1][0], "latest"):
        response = client.post("/admin/reload", headers=admin, json={"version": version})
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "bad_version"
    assert serving(client) == snapshots[1][-1]


def test_reload_of_a_corrupt_snapshot_keeps_the_old_one_serving(
    private: tuple[Path, list[str]], admin: dict[str, str]
) -> None:
    root, (older, newer) = private
    corrupt(root / older)
    with app_client(root) as client:
        response = client.post("/admin/reload", headers=admin, json={"version": older})
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "checksum_mismatch"
        assert serving(client) == newer
        assert client.post("/v1/recall", json={"user_id": "1"}).status_code == 200
        metrics = client.get("/metrics").text
    assert 'recall_reload_failures_total{code="checksum_mismatch"} 1.0' in metrics


@pytest.mark.parametrize(
    ("damage", "code"),
    [
        (lambda folder: (folder / "users.safetensors").write_bytes(b"short"), "size_mismatch"),
        (lambda folder: (folder / "items.json").unlink(), "missing_file"),
        (lambda folder: (folder / "manifest.json").unlink(), "missing_manifest"),
        (lambda folder: (folder / "manifest.json").write_text("{"), "bad_manifest"),
    ],
)
def test_reload_failure_names_the_failed_check(
    private: tuple[Path, list[str]], admin: dict[str, str], damage: object, code: str
) -> None:
    root, (older, newer) = private
    damage(root / older)  # type: ignore[operator]
    with app_client(root) as client:
        response = client.post("/admin/reload", headers=admin, json={"version": older})
        assert (response.status_code, response.json()["error"]["code"]) == (409, code)
        assert serving(client) == newer


def test_reload_of_a_missing_version_is_409(client: AppClient, admin: dict[str, str]) -> None:
    response = client.post(
        "/admin/reload", headers=admin, json={"version": "20000101T000000Z-00000000"}
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "snapshot_not_found"


def test_reload_rollback_and_no_op(
    client: AppClient, admin: dict[str, str], snapshots: tuple[Path, list[str]]
) -> None:
    older, newer = snapshots[1]
    same = client.post("/admin/reload", headers=admin)  # default: newest valid = served
    assert same.status_code == 200
    assert same.json()["changed"] is False and "already" in same.json()["message"]
    nothing = client.post("/admin/rollback", headers=admin)
    assert (nothing.status_code, nothing.json()["error"]["code"]) == (409, "no_previous_snapshot")
    swapped = client.post("/admin/reload", headers=admin, json={"version": older}).json()
    assert swapped == {"changed": True, "current": older, "previous": newer,
                       "message": f"now serving {older}"}  # fmt: skip
    assert client.post("/v1/recall", json={"user_id": "1"}).json()["snapshot"] == older
    assert client.get("/admin/snapshot", headers=admin).json() == {
        "current": older,
        "previous": newer,
    }
    back = client.post("/admin/rollback", headers=admin).json()
    assert (back["changed"], back["current"], back["previous"]) == (True, newer, older)
    assert serving(client) == newer


def test_snapshot_listing_shows_status_and_what_is_served(
    private: tuple[Path, list[str]], admin: dict[str, str]
) -> None:
    root, (older, newer) = private
    corrupt(root / older, "model.safetensors")
    (root / "20000101T000000Z-0000000a").mkdir()  # unfinished: no manifest
    with app_client(root) as client:
        listed = client.get("/admin/snapshots", headers=admin).json()["snapshots"]
        quick = client.get("/admin/snapshots?verify=false", headers=admin).json()["snapshots"]
    by_version = {entry["version"]: entry for entry in listed}
    assert [entry["version"] for entry in listed] == [newer, older, "20000101T000000Z-0000000a"]
    assert by_version[newer]["status"] == "valid" and by_version[newer]["serving"] == "current"
    assert by_version[older]["status"] == "corrupt"
    assert by_version[older]["problem"].startswith("checksum_mismatch")
    assert by_version["20000101T000000Z-0000000a"]["status"] == "incomplete"
    assert {e["version"]: e["status"] for e in quick}[older] == "valid"  # sizes only


def test_start_up_skips_a_corrupt_newest_snapshot(private: tuple[Path, list[str]]) -> None:
    root, (older, newer) = private
    corrupt(root / newer)
    with app_client(root) as client:
        assert serving(client) == older


def test_start_up_skips_a_snapshot_that_fails_to_load(
    private: tuple[Path, list[str]], admin: dict[str, str]
) -> None:
    root, (older, newer) = private
    manifest = json.loads((root / newer / "manifest.json").read_text())
    manifest["dim"] += 1  # consistent checksums, wrong contents
    (root / newer / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
    with app_client(root) as client:
        assert serving(client) == older
        response = client.post("/admin/reload", headers=admin, json={"version": newer})
        assert (response.status_code, response.json()["error"]["code"]) == (409, "dim_mismatch")
