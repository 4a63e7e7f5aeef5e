"""Building and publishing: atomic publish, determinism, retention."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import index_builder.build as build_module
from index_builder.build import BuildOptions, build_snapshot
from index_builder.manifest import VERSION_PATTERN, new_version
from index_builder.snapshot import (
    SnapshotExistsError,
    list_snapshots,
    load_snapshot,
    newest_valid,
    prune,
    publish,
)
from index_builder.store import staging
from tests.index_builder.conftest import FAST
from tests.index_builder.helpers import clone, flip_byte


def visible(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if VERSION_PATTERN.fullmatch(p.name))


def test_build_killed_mid_write_leaves_no_visible_snapshot(
    tiny_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(folder: Path, table: object) -> None:
        (folder / "users.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(build_module, "write_users", crash)
    with pytest.raises(KeyboardInterrupt):
        build_snapshot(tiny_artifact, tmp_path, FAST)
    assert list_snapshots(tmp_path) == [] and visible(tmp_path) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_leftovers_of_a_killed_build_are_ignored_then_cleaned(
    tiny_artifact: Path, tmp_path: Path
) -> None:
    stale = tmp_path / f".tmp-{new_version()}-deadbeef"
    stale.mkdir()
    (stale / "index.faiss").write_bytes(b"partial")
    assert list_snapshots(tmp_path) == []
    version = build_snapshot(tiny_artifact, tmp_path, FAST)
    assert not stale.exists()
    assert visible(tmp_path) == [version] and newest_valid(tmp_path) == version


def test_two_builds_from_one_artifact_give_bitwise_identical_item_vectors(
    built: tuple[Path, str], tiny_artifact: Path, tmp_path: Path
) -> None:
    root, first = built
    second = build_snapshot(tiny_artifact, tmp_path, FAST)
    assert first != second
    a, b = load_snapshot(root, first), load_snapshot(tmp_path, second)
    vectors_a, vectors_b = (
        a.index.reconstruct_n(0, a.index.ntotal),
        b.index.reconstruct_n(0, b.index.ntotal),
    )
    np.testing.assert_array_equal(vectors_a.view(np.uint32), vectors_b.view(np.uint32))
    for name in ("items.safetensors", "users.safetensors", "model.safetensors", "index.faiss"):
        assert a.manifest.files[name] == b.manifest.files[name]


def fabricate(source: Path, root: Path, count: int) -> list[str]:
    """``count`` valid clones of ``source`` with increasing versions, oldest first."""
    versions = [f"2025010{day}T000000Z-0000000{day}" for day in range(1, count + 1)]
    for version in versions:
        clone(source, root, version, created=f"2025-01-0{version[7]}T00:00:00+00:00")
    return versions


def test_prune_keeps_the_newest_valid_versions_and_leaves_corrupt_ones(
    built: tuple[Path, str], tmp_path: Path
) -> None:
    root, version = built
    versions = fabricate(root / version, tmp_path, 5)
    flip_byte(tmp_path / versions[0] / "items.json")  # corrupt but size intact
    (tmp_path / versions[1] / "index.faiss").write_bytes(b"")  # corrupt: truncated
    removed = prune(tmp_path, keep=2)
    assert removed == [versions[2]]
    assert visible(tmp_path) == [versions[0], versions[1], versions[3], versions[4]]
    assert [s.version for s in list_snapshots(tmp_path) if s.status == "valid"] == [
        versions[4],
        versions[3],
    ]


def test_prune_never_deletes_the_protected_version(built: tuple[Path, str], tmp_path: Path) -> None:
    root, version = built
    versions = fabricate(root / version, tmp_path, 3)
    assert prune(tmp_path, keep=1, protect=versions[0]) == [versions[1]]
    assert visible(tmp_path) == [versions[0], versions[2]]
    with pytest.raises(ValueError):
        prune(tmp_path, keep=0)


def test_build_prunes_to_keep_but_keeps_the_new_version(
    built: tuple[Path, str], tiny_artifact: Path, tmp_path: Path
) -> None:
    root, version = built
    old = fabricate(root / version, tmp_path, 3)
    new = build_snapshot(
        tiny_artifact, tmp_path, BuildOptions(k=10, tuning_users=50, keep=2, progress=False)
    )
    assert visible(tmp_path) == sorted([old[2], new])


def test_publish_never_overwrites_an_existing_version(
    built: tuple[Path, str], tmp_path: Path
) -> None:
    root, version = built
    clone(root / version, tmp_path, version)
    before = {p.name: p.read_bytes() for p in (tmp_path / version).iterdir()}
    with staging(tmp_path, version) as tmp, pytest.raises(SnapshotExistsError):
        (tmp / "index.faiss").write_bytes(b"other")
        publish(tmp, tmp_path, version)
    assert {p.name: p.read_bytes() for p in (tmp_path / version).iterdir()} == before
    assert visible(tmp_path) == [version]


def test_build_options_are_validated() -> None:
    with pytest.raises(ValueError, match="target_recall"):
        BuildOptions(target_recall=1.5)
    with pytest.raises(ValueError, match="keep"):
        BuildOptions(keep=0)


def test_every_snapshot_file_gets_the_same_mode(built: tuple[Path, str]) -> None:
    root, version = built
    modes = {path.name: path.stat().st_mode & 0o777 for path in (root / version).iterdir()}
    assert len(set(modes.values())) == 1, modes
