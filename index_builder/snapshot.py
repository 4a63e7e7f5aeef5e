"""The snapshot format shared with the service: verify, then load one version folder.

A snapshot folder ``<root>/<version>/`` holds the model artifact files (the user tower and the
feature spec, loadable with ``models.artifact.load_artifact``), ``index.faiss``, the item and
user tables (see ``index_builder.tables``) and ``manifest.json`` (see
``index_builder.manifest``). Every checksum is verified before any file is parsed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index_builder.indexes import apply_params
from index_builder.manifest import (
    METRIC,
    VERSION_PATTERN,
    SnapshotError,
    SnapshotExistsError,
    SnapshotInvalidError,
    SnapshotNotFoundError,
    check_version,
    new_version,
    verify_snapshot,
)
from index_builder.store import SnapshotStatus, list_snapshots, newest_valid, prune, publish
from index_builder.tables import read_items, read_users
from models.artifact import Artifact, ArtifactInvalidError, load_artifact

__all__ = [
    "VERSION_PATTERN",
    "LoadedSnapshot",
    "SnapshotError",
    "SnapshotExistsError",
    "SnapshotInvalidError",
    "SnapshotNotFoundError",
    "SnapshotStatus",
    "check_version",
    "list_snapshots",
    "load_snapshot",
    "new_version",
    "newest_valid",
    "prune",
    "publish",
    "verify_snapshot",
]
log = logging.getLogger(__name__)


@dataclass
class LoadedSnapshot:
    """One verified snapshot in memory; rows index ``item_ids`` / ``user_row`` values."""

    version: str
    manifest: dict[str, Any]
    artifact: Artifact
    index: faiss.Index  # search parameters from the manifest applied
    item_ids: np.ndarray  # [I] object (str)
    item_row: dict[str, int]
    item_attributes: dict[str, np.ndarray]  # name -> [I, ...] int64
    item_tokens: np.ndarray  # [I] int64
    popularity: np.ndarray  # [I] int64
    user_row: dict[str, int]
    user_features: dict[str, np.ndarray]  # name -> [U, ...]
    seen_offsets: np.ndarray  # [U + 1] int64
    seen_items: np.ndarray  # [S] int64

    def item_vector(self, row: int) -> np.ndarray:
        """Item row -> its indexed vector ``[dim]`` float32 (approximate for PQ codes)."""
        return np.asarray(self.index.reconstruct(int(row)), dtype=np.float32)

    def seen(self, user_row: int) -> np.ndarray:
        """Item rows a known user interacted with, in time order ``[n]`` int64."""
        return self.seen_items[self.seen_offsets[user_row] : self.seen_offsets[user_row + 1]]


def _invalid(path: Path, message: str, code: str) -> SnapshotInvalidError:
    return SnapshotInvalidError(f"{path}: {message}; rebuild the snapshot", code)


def _read_index(path: Path, params: dict[str, Any]) -> faiss.Index:
    try:
        index = faiss.read_index(str(path))
        apply_params(index, params)
    except RuntimeError as exc:
        raise _invalid(path, f"faiss cannot read it ({exc})", "index_unreadable") from exc
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.make_direct_map()  # lets item_vector reconstruct by row
    return index


def load_snapshot(root: Path, version: str) -> LoadedSnapshot:
    """Verify and load ``root/version``.

    Raises SnapshotInvalidError (bad version, failed checksum, or contents that disagree with
    the manifest: dim, metric, counts) or SnapshotNotFoundError.
    """
    check_version(version)
    path = Path(root) / version
    if not path.is_dir():
        raise SnapshotNotFoundError(
            f"{path}: no such snapshot; see `recall snapshot list --snapshots {root}`"
        )
    manifest = verify_snapshot(path)
    try:
        artifact = load_artifact(path)
    except (ArtifactInvalidError, KeyError, ValueError, RuntimeError) as exc:
        raise _invalid(path, f"the model files do not load ({exc})", "artifact_unreadable") from exc
    index = _read_index(path / "index.faiss", manifest["index"]["params"])
    try:
        items, users = read_items(path), read_users(path)
    except (KeyError, ValueError, OSError) as exc:
        raise _invalid(path, f"item or user table unreadable ({exc})", "table_unreadable") from exc
    dims = {"index.faiss": index.d, "manifest.json": manifest["dim"]}
    dims["config.json"] = artifact.config.model.dim
    if len(set(dims.values())) != 1:
        raise _invalid(path, f"vector dims disagree {dims}", "dim_mismatch")
    if manifest.get("metric") != METRIC or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise _invalid(
            path / "index.faiss",
            f"metric is {manifest.get('metric')!r} / faiss {index.metric_type}, expected {METRIC}",
            "metric_mismatch",
        )
    counts = manifest["counts"]
    found = {
        "items": {index.ntotal, len(items.item_ids), len(items.item_tokens), len(items.popularity)}
        | {len(values) for values in items.attributes.values()},
        "users": {len(users.user_ids), len(users.seen_offsets) - 1},
        "seen_interactions": {len(users.seen_items)},
    }
    for key, sizes in found.items():
        if sizes != {counts[key]}:
            raise _invalid(
                path, f"{key} count {sorted(sizes)} != manifest {counts[key]}", "count_mismatch"
            )
    log.info("loaded snapshot %s (%d items, %d users)", version, index.ntotal, len(users.user_ids))
    return LoadedSnapshot(
        version=version,
        manifest=manifest,
        artifact=artifact,
        index=index,
        item_ids=items.item_ids,
        item_row={item: row for row, item in enumerate(items.item_ids.tolist())},
        item_attributes=items.attributes,
        item_tokens=items.item_tokens,
        popularity=items.popularity,
        user_row={user: row for row, user in enumerate(users.user_ids.tolist())},
        user_features=users.features,
        seen_offsets=users.seen_offsets,
        seen_items=users.seen_items,
    )
