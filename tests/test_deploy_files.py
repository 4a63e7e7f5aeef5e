"""Static checks of the Dockerfile and docker-compose.yml (no Docker engine runs here)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_one_worker_as_non_root_with_a_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.M), "the image must not run as root"
    assert re.search(r"^HEALTHCHECK .*healthz", text, re.M | re.S)
    assert "torch==2.13.0" in text and "whl/cpu" in text, "CPU torch, pinned like pyproject"
    assert re.search(r'^CMD \["recall", "serve"\]', text, re.M)


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
@pytest.mark.parametrize("profile", [[], ["--profile", "batch"]])
def test_compose_file_is_valid(profile: list[str]) -> None:
    result = subprocess.run(
        ["docker-compose", *profile, "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_compose_runs_redis_api_and_batch_jobs_sharing_snapshots() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    services = dict(re.findall(r"^  (\w+):\n((?:    .*\n|\s*\n)*)", text, re.M))
    assert {"redis", "api", "train", "index"} <= set(services)
    assert "healthcheck:" in services["redis"]
    assert re.search(r"redis:\s*\n\s*condition: service_healthy", services["api"])
    for job in ("train", "index"):
        assert 'profiles: ["batch"]' in services[job]
    assert "snapshots:/app/snapshots" in services["index"]
    assert "snapshots:/app/snapshots" in services["api"]
