"""Snapshot format: round trip through load_snapshot, and every check verify/load makes."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from index_builder.build import BuildOptions, build_snapshot
from index_builder.catalogue import embed_items, load_catalogue, query_vectors
from index_builder.indexes import exact_search
from index_builder.manifest import MANIFEST, PARITY, REQUIRED_FILES, new_version, seal_manifest
from index_builder.snapshot import (
    SnapshotInvalidError,
    SnapshotNotFoundError,
    check_version,
    list_snapshots,
    load_snapshot,
    newest_valid,
    verify_snapshot,
)
from index_builder.tables import decode_strings, encode_strings
from models.artifact import load_artifact
from tests.index_builder.conftest import ODD_ITEM, ODD_USER
from tests.index_builder.helpers import clone, flip_byte


def test_loaded_index_returns_the_exact_top_items_of_the_item_tower(
    built: tuple[Path, str], tiny_artifact: Path
) -> None:
    root, version = built
    snapshot = load_snapshot(root, version)
    artifact = load_artifact(tiny_artifact)
    catalogue = load_catalogue(artifact)
    item_vectors = embed_items(artifact.model, catalogue.data.item_features)
    queries = query_vectors(artifact, catalogue, 50, seed=0)
    _, rows = snapshot.index.search(queries, 10)
    np.testing.assert_array_equal(rows, exact_search(item_vectors, queries, 10))
    np.testing.assert_array_equal(snapshot.item_vector(7), item_vectors[7])


def test_item_ids_users_and_seen_items_round_trip(
    built: tuple[Path, str], tiny_artifact: Path
) -> None:
    root, version = built
    snapshot = load_snapshot(root, version)
    catalogue = load_catalogue(load_artifact(tiny_artifact))
    data = catalogue.data
    assert snapshot.item_ids.tolist() == data.item_ids.tolist()
    assert all(type(item) is str for item in snapshot.item_ids)
    assert snapshot.item_ids[snapshot.item_row[ODD_ITEM]] == ODD_ITEM
    assert set(snapshot.user_row) == set(data.user_ids.tolist()) and ODD_USER in snapshot.user_row
    assert snapshot.user_features.keys() == data.user_features.keys()
    for name, values in data.user_features.items():
        np.testing.assert_array_equal(snapshot.user_features[name], values)
    np.testing.assert_array_equal(snapshot.item_tokens, data.item_tokens)
    np.testing.assert_array_equal(snapshot.item_attributes["genres"], data.item_features["genres"])
    user = snapshot.user_row[ODD_USER]
    # The tiny dataset's timestamps grow with the line, so time order is file order.
    known = catalogue.known_rows[data.inter_users[catalogue.known_rows] == user]
    np.testing.assert_array_equal(snapshot.seen(user), data.inter_items[known])
    assert snapshot.popularity.sum() == len(catalogue.known_rows)
    assert snapshot.seen_offsets.dtype == snapshot.seen_items.dtype == np.int64


def test_manifest_describes_the_build(built: tuple[Path, str]) -> None:
    root, version = built
    manifest = load_snapshot(root, version).manifest
    assert manifest.version == version and manifest.metric == "inner_product"
    assert manifest.dim == 8 and manifest.format_version == 2 and manifest.manifest_sha256
    assert manifest.counts.model_dump() == {"items": 200, "users": 50, "seen_interactions": 1950}
    assert manifest.index.type == "flat" and "200 items" in manifest.index.reason
    assert manifest.tuning["recall"] == 1.0 and manifest.tuning["target_reached"]
    assert {"p50", "p99"} <= manifest.latency_ms.keys()
    assert "two-tower" in manifest.offline_metrics["test"]
    assert set(manifest.files) == set(REQUIRED_FILES) | {PARITY}
    assert {p.name for p in (root / version).iterdir()} == set(manifest.files) | {MANIFEST}


def test_snapshot_folder_loads_as_the_same_model_artifact(
    built: tuple[Path, str], tiny_artifact: Path
) -> None:
    root, version = built
    copy, original = load_artifact(root / version), load_artifact(tiny_artifact)
    assert copy.fingerprint == original.fingerprint
    for key, value in original.model.state_dict().items():
        assert copy.model.state_dict()[key].equal(value)


@pytest.mark.parametrize(
    ("damage", "file", "code"),
    [
        ("flip", "index.faiss", "checksum_mismatch"),
        ("truncate", "items.safetensors", "size_mismatch"),
        ("delete", "users.safetensors", "missing_file"),
        ("delete", "manifest.json", "missing_manifest"),
        ("garble", "manifest.json", "bad_manifest"),
    ],
)
def test_damaged_snapshot_is_refused_naming_the_file(
    built: tuple[Path, str], tmp_path: Path, damage: str, file: str, code: str
) -> None:
    source_root, source = built
    version = new_version()
    path = clone(source_root / source, tmp_path, version) / file
    if damage == "flip":
        flip_byte(path, offset=len(path.read_bytes()) // 2)
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-10])
    elif damage == "delete":
        path.unlink()
    else:
        path.write_text("{not json")
    for check in (verify_snapshot, lambda p: load_snapshot(p.parent, p.name)):
        with pytest.raises(SnapshotInvalidError) as caught:
            check(tmp_path / version)
        assert caught.value.code == code
        assert file in str(caught.value)
    [status] = list_snapshots(tmp_path)
    assert status.status == ("incomplete" if code == "missing_manifest" else "corrupt")
    assert file in (status.problem or "")
    assert newest_valid(tmp_path) is None


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"dim": 9}, "dim_mismatch"),
        ({"metric": "l2"}, "metric_mismatch"),
        ({"counts": {"items": 201, "users": 50, "seen_interactions": 1950}}, "count_mismatch"),
        ({"counts": {"items": 200, "users": 50, "seen_interactions": 3}}, "count_mismatch"),
    ],
)
def test_contents_that_disagree_with_the_manifest_are_refused(
    built: tuple[Path, str], tmp_path: Path, changes: dict[str, object], code: str
) -> None:
    source_root, source = built
    version = new_version()
    clone(source_root / source, tmp_path, version, **changes)
    verify_snapshot(tmp_path / version)  # the checksums still match
    with pytest.raises(SnapshotInvalidError) as caught:
        load_snapshot(tmp_path, version)
    assert caught.value.code == code


@pytest.mark.parametrize(
    "version",
    [
        "../x",
        "",
        "..",
        "20250101T000000Z-0A1B2C3D",
        "20250101T000000Z-0a1b2c3d/..",
        "/etc",
        "20250101T000000Z-0a1b2c3",
        "x20250101T000000Z-0a1b2c3d",
    ],
)
def test_bad_version_strings_are_refused_before_any_file_access(
    tmp_path: Path, version: str
) -> None:
    missing_root = tmp_path / "does-not-exist"  # any file access would say not_found instead
    with pytest.raises(SnapshotInvalidError) as caught:
        load_snapshot(missing_root, version)
    assert caught.value.code == "bad_version"
    with pytest.raises(SnapshotInvalidError):
        check_version(version)


def test_unknown_version_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(SnapshotNotFoundError) as caught:
        load_snapshot(tmp_path, new_version())
    assert caught.value.code == "snapshot_not_found"


def test_new_versions_match_the_pattern_and_sort_by_time() -> None:
    from datetime import UTC, datetime

    early = new_version(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert early.startswith("20250102T030405Z-") and check_version(early) == early
    assert new_version() > early


def test_listing_ignores_temp_and_foreign_folders(built: tuple[Path, str], tmp_path: Path) -> None:
    source_root, source = built
    clone(source_root / source, tmp_path, "20250101T000000Z-00000001")
    clone(source_root / source, tmp_path, ".tmp-20250101T000000Z-00000002-abcd1234")
    (tmp_path / "notes").mkdir()
    assert [s.version for s in list_snapshots(tmp_path)] == ["20250101T000000Z-00000001"]


def test_strings_round_trip_through_bytes_and_int64_offsets() -> None:
    values = ["a", "", ODD_ITEM, ODD_USER, "x" * 300]
    data, offsets = encode_strings(values)
    assert data.dtype == np.uint8 and offsets.dtype == np.int64 and len(offsets) == 6
    assert decode_strings(data, offsets).tolist() == values
    with pytest.raises(ValueError):
        decode_strings(data, offsets[:-1])


def test_verify_reads_only_plain_file_names_from_the_manifest(
    built: tuple[Path, str], tmp_path: Path
) -> None:
    source_root, source = built
    version = new_version()
    folder = clone(source_root / source, tmp_path, version)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"]["../escape"] = manifest["files"]["index.faiss"]
    (folder / MANIFEST).write_text(json.dumps(seal_manifest(manifest)))
    with pytest.raises(SnapshotInvalidError) as caught:
        verify_snapshot(folder)
    assert caught.value.code == "bad_manifest" and "../escape" in str(caught.value)


@pytest.mark.parametrize("kind", ["hnsw", "ivf-flat", "ivf-pq"])
def test_every_index_kind_loads_with_its_tuned_parameters_and_reconstructs_items(
    tiny_artifact: Path, tmp_path: Path, kind: str
) -> None:
    options = BuildOptions(
        index=kind, k=10, tuning_users=50, progress=False, hnsw_ef_construction=40
    )
    snapshot = load_snapshot(tmp_path, build_snapshot(tiny_artifact, tmp_path, options))
    assert snapshot.manifest.index.type == kind
    built_with = snapshot.manifest.index.build_params
    params = snapshot.manifest.index.params
    ivf = faiss.try_extract_index_ivf(snapshot.index)
    if kind == "hnsw":
        assert faiss.downcast_index(snapshot.index).hnsw.efSearch == params["efSearch"]
        assert faiss.downcast_index(snapshot.index).hnsw.efConstruction == 40
        assert built_with == {"efConstruction": 40}
    else:
        assert ivf is not None and ivf.nprobe == params["nprobe"]
        assert built_with == {}
    vector = snapshot.item_vector(7)  # IVF-PQ reconstructs through its refine step
    assert vector.shape == (8,) and abs(float(vector @ vector) - 1.0) < 0.05
    _, rows = snapshot.index.search(vector[None, :], 5)
    assert 7 in rows[0]
