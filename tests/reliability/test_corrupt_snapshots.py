"""Corrupt snapshots are refused by a reload, naming the failed check, and nothing changes.

Each damaged copy of snapshot "b" gets a version older than "a" (so start-up serves "a"), and
its manifest is rewritten for the new folder name. Damage that keeps the checksums consistent
(the manifest re-summed) reaches the deeper checks: faiss reading the index, the dimensions.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest

from index_builder.manifest import seal_manifest
from tests.index_builder.helpers import resum
from tests.index_builder.test_contents import DAMAGE as CONTENT_DAMAGE
from tests.reliability.conftest import ADMIN, Server

pytestmark = pytest.mark.slow


def truncate_index(folder: Path) -> None:
    index = folder / "index.faiss"
    index.write_bytes(index.read_bytes()[: index.stat().st_size // 2])


def truncate_index_resummed(folder: Path) -> None:
    truncate_index(folder)
    resum(folder)


def flip_a_byte(folder: Path) -> None:
    index = folder / "index.faiss"
    data = bytearray(index.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index.write_bytes(bytes(data))


def wrong_dimension(folder: Path) -> None:
    old = faiss.read_index(str(folder / "index.faiss"))
    index = faiss.IndexFlatIP(old.d + 1)
    index.add(np.random.default_rng(0).random((old.ntotal, old.d + 1), dtype=np.float32))
    faiss.write_index(index, str(folder / "index.faiss"))
    resum(folder)


def missing_manifest(folder: Path) -> None:
    (folder / "manifest.json").unlink()


def checksum_mismatch(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["items.safetensors"]["sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))


def edit_manifest(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["counts"]["users"] += 0  # unchanged, but written by hand without the seal
    manifest["created"] = "2000-01-01T00:00:00+00:00"
    (folder / "manifest.json").write_text(json.dumps(manifest))


def half_written(folder: Path) -> None:
    """What a build killed half way leaves, had it written under the final name."""
    for name in ("manifest.json", "index.faiss", "users.safetensors"):
        (folder / name).unlink()


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated index": (truncate_index, "size_mismatch"),
    "truncated index, manifest re-summed": (truncate_index_resummed, "index_unreadable"),
    "a flipped byte": (flip_a_byte, "checksum_mismatch"),
    "wrong dimension": (wrong_dimension, "dim_mismatch"),
    "missing manifest": (missing_manifest, "missing_manifest"),
    "checksum mismatch": (checksum_mismatch, "checksum_mismatch"),
    "half-written folder": (half_written, "missing_manifest"),
    "an edited manifest": (edit_manifest, "manifest_checksum_mismatch"),
    **{  # right checksums, wrong contents
        kind: (lambda folder, damage=damage: (damage(folder), resum(folder)), code)
        for kind, (damage, code) in CONTENT_DAMAGE.items()
    },
}


def damaged_copies(root: Path, versions: dict[str, str], dest: Path) -> tuple[Path, dict[str, str]]:
    """``dest`` with "a" intact and one damaged copy of "b" per kind of damage."""
    shutil.copytree(root / versions["a"], dest / versions["a"])
    named = {}
    for n, (kind, (damage, _)) in enumerate(DAMAGE.items()):
        version = f"20000101T0000{n:02d}Z-{n:08x}"
        folder = dest / version
        shutil.copytree(root / versions["b"], folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["version"] = version
        (folder / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
        damage(folder)
        named[kind] = version
    return dest, named


def test_corrupt_snapshots_are_refused_naming_the_check_and_the_old_one_keeps_serving(
    disjoint: tuple[Path, dict[str, str]], serve: Callable[..., Server], tmp_path: Path
) -> None:
    root, versions = disjoint
    private, damaged = damaged_copies(root, versions, tmp_path / "snapshots")
    server = serve(private)
    with server.client(timeout_s=60) as client:
        for kind, version in damaged.items():
            expected = DAMAGE[kind][1]
            answers = [
                client.post("/admin/reload", headers=ADMIN, json={"version": version})
                for _ in range(2)  # a retry gives the same answer
            ]
            for response in answers:
                assert response.status_code == 409, (kind, response.text)
                assert response.json()["error"]["code"] == expected, (kind, response.text)
            assert answers[0].json() == answers[1].json()
            assert client.get("/admin/snapshot", headers=ADMIN).json()["current"] == versions["a"]
            body = client.post("/v1/recall", json={"user_id": "1", "k": 5}).json()
            assert body["snapshot"] == versions["a"]
            assert all(item["item_id"].startswith("a") for item in body["items"])
        metrics = client.get("/metrics").text
    for code in {code for _, code in DAMAGE.values()}:
        assert f'recall_reload_failures_total{{code="{code}"}}' in metrics
