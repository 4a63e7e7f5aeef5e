"""Admin routes: no token, a wrong token, and versions that try to leave the snapshots folder."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.conftest import ADMIN, Server, copy_versions

pytestmark = pytest.mark.slow
ESCAPES = (
    "../x",
    "../x/20000101T000000Z-00000000",
    "20000101T000000Z-00000000/../../x",
    "..",
    "/etc/passwd",
    "..%2Fx",
    "20000101T000000Z-0000000g",  # not hex
    "20000101T000000Z-00000000\n",
    "x" * 128,
)


def test_admin_routes_refuse_a_missing_or_wrong_token(
    disjoint: tuple[Path, dict[str, str]], serve: Callable[..., Server]
) -> None:
    root, versions = disjoint
    server = serve(root)
    with server.client() as client:
        for method, url in (("GET", "/admin/snapshots"), ("GET", "/admin/snapshot"),
                            ("POST", "/admin/reload"), ("POST", "/admin/rollback")):  # fmt: skip
            missing = client.request(method, url)
            assert missing.status_code == 401
            assert missing.json()["error"]["code"] == "unauthorized"
            assert missing.headers["www-authenticate"] == "Bearer"
            for header in ("Basic abc", "Bearer", "bearer"):
                response = client.request(method, url, headers={"Authorization": header})
                assert response.status_code == 401, header
            wrong = client.request(method, url, headers={"Authorization": "Bearer " + "x" * 27})
            assert wrong.status_code == 403  # see service/routes/admin.py: a token, not ours
            assert wrong.json()["error"]["code"] == "forbidden"
        assert client.get("/admin/snapshot", headers=ADMIN).json()["current"] == versions["b"]


def is_library(path: str) -> bool:
    """Python's own files (a lazily imported module), not data."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    return any(path.startswith(prefix) for prefix in prefixes) or path.endswith((".py", ".pyc"))


def test_a_version_that_is_a_path_is_refused_without_touching_the_file_system(
    disjoint: tuple[Path, dict[str, str]], serve: Callable[..., Server], tmp_path: Path
) -> None:
    root, versions = disjoint
    private = copy_versions(root, tmp_path / "snapshots", list(versions.values()))
    canary = tmp_path / "x" / "20000101T000000Z-00000000"  # what "../x/..." would reach
    shutil.copytree(root / versions["a"], canary)
    opened_log = tmp_path / "opened.txt"
    server = serve(private, audit_log=opened_log)
    with server.client() as client:
        first = client.post("/admin/reload", headers=ADMIN, json={"version": ESCAPES[0]})
        assert first.status_code == 422  # also loads whatever the error path imports lazily
        mark = len(opened_log.read_text().splitlines())
        for version in ESCAPES:
            response = client.post("/admin/reload", headers=ADMIN, json={"version": version})
            assert response.status_code == 422, (version, response.text)
            assert response.json()["error"]["code"] in ("bad_version", "validation_error")
        assert client.get("/admin/snapshot", headers=ADMIN).json()["current"] == versions["b"]
        assert client.post("/v1/recall", json={"user_id": "1"}).status_code == 200
    opened = opened_log.read_text().splitlines()[mark:]
    outside = [
        path
        for path in opened
        if not Path(path).resolve().is_relative_to(private.resolve()) and not is_library(path)
    ]
    assert outside == []
    assert not any(str(canary.parent) in path for path in opened_log.read_text().splitlines())
