"""`recall build-index` and `recall snapshot ...` exit codes and messages."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from index_builder.manifest import new_version
from index_builder.snapshot import list_snapshots
from recall.cli import main
from tests.index_builder.helpers import clone, flip_byte

BUILD = ["--k", "10", "--tuning-users", "50", "--no-progress"]


@pytest.fixture(autouse=True)
def _omp_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """build-index sets OMP_WAIT_POLICY if unset; keep that from leaking into other tests."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")


def test_snapshot_verify_exits_non_zero_naming_the_corrupt_file(
    built: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, source = built
    version = new_version()
    clone(root / source, tmp_path, version)
    assert main(["snapshot", "verify", version, "--snapshots", str(tmp_path)]) == 0
    flip_byte(tmp_path / version / "model.safetensors")
    assert main(["snapshot", "verify", version, "--snapshots", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "checksum_mismatch" in err


def test_snapshot_verify_refuses_bad_versions_and_missing_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["snapshot", "verify", "../x", "--snapshots", str(tmp_path)]) == 1
    assert "bad_version" in capsys.readouterr().err
    assert main(["snapshot", "show", new_version(), "--snapshots", str(tmp_path)]) == 1
    assert "not_found" in capsys.readouterr().err


def test_snapshot_list_and_show_print_status_and_manifest(
    built: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, source = built
    good, bad = "20250102T000000Z-00000002", "20250101T000000Z-00000001"
    clone(root / source, tmp_path, good)
    (clone(root / source, tmp_path, bad) / "manifest.json").unlink()
    assert main(["snapshot", "list", "--snapshots", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert good in lines[1] and "valid" in lines[1] and "flat" in lines[1]
    assert bad in lines[2] and "incomplete" in lines[2]
    assert main(["snapshot", "show", good, "--snapshots", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == good


class ReloadHandler(BaseHTTPRequestHandler):
    """Records each POST; answers with the server's ``status``."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((self.path, self.headers["Authorization"], json.loads(body)))  # type: ignore[attr-defined]
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def service() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ReloadHandler)
    server.requests, server.status = [], 200  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_build_index_notifies_the_service_with_the_admin_token(
    tiny_artifact: Path,
    tmp_path: Path,
    service: ThreadingHTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RECALL_ADMIN_TOKEN", "s3cret")
    url = f"http://127.0.0.1:{service.server_port}/admin/reload"
    args = ["build-index", "--artifact", str(tiny_artifact), "--snapshots", str(tmp_path)]
    assert main([*args, *BUILD, "--notify", url]) == 0
    [version] = [s.version for s in list_snapshots(tmp_path)]
    assert service.requests == [("/admin/reload", "Bearer s3cret", {"version": version})]  # type: ignore[attr-defined]


def test_failed_notify_exits_3_and_leaves_the_snapshot_published(
    tiny_artifact: Path,
    tmp_path: Path,
    service: ThreadingHTTPServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RECALL_ADMIN_TOKEN", "s3cret")
    service.status = 503  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{service.server_port}/admin/reload"
    args = ["build-index", "--artifact", str(tiny_artifact), "--snapshots", str(tmp_path)]
    assert main([*args, *BUILD, "--notify", url]) == 3
    [status] = list_snapshots(tmp_path)
    assert status.status == "valid"
    err = capsys.readouterr().err
    assert status.version in err and "503" in err


def test_notify_without_a_token_is_refused_before_building(
    tiny_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECALL_ADMIN_TOKEN", raising=False)
    args = ["build-index", "--artifact", str(tiny_artifact), "--snapshots", str(tmp_path / "s")]
    assert main([*args, *BUILD, "--notify", "http://127.0.0.1:9/admin/reload"]) == 2
    assert not (tmp_path / "s").exists()


def test_build_index_reports_a_missing_artifact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["build-index", "--artifact", str(tmp_path / "nope"), "--snapshots", str(tmp_path)]
    assert main([*args, *BUILD]) == 1
    assert "nope" in capsys.readouterr().err
