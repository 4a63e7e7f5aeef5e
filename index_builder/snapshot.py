"""The snapshot format shared with the service: verify, then load one version folder.

A snapshot folder ``<root>/<version>/`` holds the model artifact files (the user tower and the
feature spec, loadable with ``models.artifact.load_artifact``), ``index.faiss``, the item and
user tables (see ``index_builder.tables``) and ``manifest.json`` (see
``index_builder.manifest``). Every checksum is verified before any file is parsed. The
manifest's promotion gates (``index_builder.gates``) are re-exported for the service.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index_builder.gates import ann_gate, quality_gate
from index_builder.indexes import apply_params
from index_builder.manifest import (
    INDEX,
    MANIFEST,
    METRIC,
    USERS,
    VERSION_PATTERN,
    Check,
    Manifest,
    SnapshotError,
    SnapshotExistsError,
    SnapshotInvalidError,
    SnapshotNotFoundError,
    check_version,
    new_version,
    verify_snapshot,
    version_time,
)
from index_builder.store import SnapshotStatus, list_snapshots, newest_valid, prune, publish
from index_builder.tables import ItemTable, UserTable, read_items, read_parity, read_users
from models.artifact import Artifact, ArtifactInvalidError, load_artifact
from models.encoding import id_feature

__all__ = [
    "VERSION_PATTERN",
    "ann_gate",
    "quality_gate",
    "Check",
    "LoadedSnapshot",
    "Manifest",
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
    "version_time",
]
log = logging.getLogger(__name__)


@dataclass
class LoadedSnapshot:
    """One verified snapshot in memory; rows index ``item_ids`` / ``user_row`` values."""

    version: str
    manifest: Manifest
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
    # sampled known users' ids [P] and their offline vectors [P, dim] (index_builder.gates);
    # None for a snapshot built before the gates
    parity: tuple[np.ndarray, np.ndarray] | None = None

    def item_vector(self, row: int) -> np.ndarray:
        """Item row -> its indexed vector ``[dim]`` float32 (approximate for PQ codes)."""
        return np.asarray(self.index.reconstruct(int(row)), dtype=np.float32)

    def seen(self, user_row: int) -> np.ndarray:
        """Item rows a known user interacted with, in time order ``[n]`` int64."""
        return self.seen_items[self.seen_offsets[user_row] : self.seen_offsets[user_row + 1]]


def _invalid(path: Path, message: str, code: Check) -> SnapshotInvalidError:
    return SnapshotInvalidError(f"{path}: {message}; rebuild the snapshot", code)


def _read_index(path: Path, params: dict[str, Any]) -> faiss.Index:
    try:
        index = faiss.read_index(str(path))
        apply_params(index, params)
    except RuntimeError as exc:
        raise _invalid(path, f"faiss cannot read it ({exc})", Check.INDEX_UNREADABLE) from exc
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.make_direct_map()  # lets item_vector reconstruct by row
    return index


VECTOR_BLOCK = 65_536  # item vectors reconstructed at a time by the content check


def check_contents(
    path: Path,
    manifest: Manifest,
    artifact: Artifact,
    index: faiss.Index,
    items: ItemTable,
    users: UserTable,
) -> None:
    """What checksums cannot see: tables and index that were written wrong but summed right.

    Unique item and user ids; index labels within the item table; finite unit item vectors
    (loosely for product-quantised codes); seen items, item tokens, attributes and encoded
    user features within the tables and vocabularies the model and the service index.
    """
    n_items, n_users = len(items.item_ids), len(users.user_ids)
    for what, ids in (("item", items.item_ids), ("user", users.user_ids)):
        if len(set(ids.tolist())) != len(ids):
            raise _invalid(path, f"{what} ids are not unique", Check.DUPLICATE_IDS)
    labels = _labels(index)
    if labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= n_items):
        raise _invalid(
            path / INDEX,
            f"index labels {int(labels.min())}..{int(labels.max())} fall outside the "
            f"{n_items} items",
            Check.INDEX_LABELS,
        )
    quantised = "PQ" in manifest.index.factory and not manifest.index.refine
    tolerance = 0.25 if quantised else 1e-3
    for start in range(0, index.ntotal, VECTOR_BLOCK):
        block = index.reconstruct_n(start, min(VECTOR_BLOCK, index.ntotal - start))
        with np.errstate(over="ignore", invalid="ignore"):
            norms = np.linalg.norm(block.astype(np.float64), axis=1)
        bad = np.flatnonzero(~(np.abs(norms - 1.0) <= tolerance))
        if len(bad):
            row = start + int(bad[0])
            raise _invalid(
                path / INDEX,
                f"{len(bad)} item vectors from row {row} (item {items.item_ids[row]!r}) are not "
                f"finite unit vectors (norm {norms[bad[0]]:.4g})",
                Check.ITEM_VECTORS,
            )
    spec_i, spec_u = artifact.item_spec, artifact.user_spec
    vocab = len(spec_i.vocabs.get(id_feature(spec_i), {})) + 1
    ranges = [
        ("users.safetensors seen.items", users.seen_items, n_items),
        ("items.safetensors item_tokens", items.item_tokens, vocab),
    ]
    for name, values in items.attributes.items():
        size = len(items.vocabularies.get(name, {}).get("vocab", {})) + 1
        ranges.append((f"items.safetensors attr.{name}", values, size))
    by_name = {f.name: f for f in spec_u.features}
    for name, values in users.features.items():
        if name not in by_name or len(values) != n_users:
            raise _invalid(
                path / USERS,
                f"feature.{name} has {len(values)} rows for {n_users} users or is not a feature "
                "of the user tower",
                Check.USER_TABLE,
            )
        if by_name[name].kind != "numeric":
            ranges.append((f"users.safetensors feature.{name}", values,
                           spec_u.cardinality(by_name[name], vocab)))  # fmt: skip
    offsets = users.seen_offsets
    if len(offsets) and (offsets[0] != 0 or np.any(np.diff(offsets) < 0)):
        raise _invalid(path / USERS, "seen.offsets is not a CSR", Check.USER_TABLE)
    for name, values, size in ranges:
        if values.size and (values.min() < 0 or values.max() >= size):
            raise _invalid(
                path,
                f"{name} holds {int(values.min())}..{int(values.max())}, outside 0..{size - 1}",
                Check.USER_TABLE if name.startswith("users") else Check.ITEM_TABLE,
            )


def _labels(index: faiss.Index) -> np.ndarray | None:
    """Every label an IVF index or an id map can return; None where labels are rows."""
    if isinstance(index, faiss.IndexIDMap):
        return faiss.vector_to_array(index.id_map)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return None
    lists = ivf.invlists
    if lists is None:
        return None
    parts = [
        faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
        for i in range(lists.nlist)
        if lists.list_size(i)
    ]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


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
        message = f"the model files do not load ({exc})"
        raise _invalid(path, message, Check.ARTIFACT_UNREADABLE) from exc
    index = _read_index(path / INDEX, manifest.index.params)
    try:
        items, users, parity = read_items(path), read_users(path), read_parity(path)
    except (KeyError, ValueError, OSError) as exc:
        message = f"item or user table unreadable ({exc})"
        raise _invalid(path, message, Check.TABLE_UNREADABLE) from exc
    dims = {INDEX: index.d, MANIFEST: manifest.dim}
    dims["config.json"] = artifact.config.model.dim
    if len(set(dims.values())) != 1:
        raise _invalid(path, f"vector dims disagree {dims}", Check.DIM_MISMATCH)
    if manifest.metric != METRIC or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise _invalid(
            path / INDEX,
            f"metric is {manifest.metric!r} / faiss {index.metric_type}, expected {METRIC}",
            Check.METRIC_MISMATCH,
        )
    counts = manifest.counts.model_dump()
    found = {
        "items": {index.ntotal, len(items.item_ids), len(items.item_tokens), len(items.popularity)}
        | {len(values) for values in items.attributes.values()},
        "users": {len(users.user_ids), len(users.seen_offsets) - 1},
        "seen_interactions": {len(users.seen_items)},
    }
    for key, sizes in found.items():
        if sizes != {counts[key]}:
            raise _invalid(
                path, f"{key} count {sorted(sizes)} != manifest {counts[key]}", Check.COUNT_MISMATCH
            )
    check_contents(path, manifest, artifact, index, items, users)
    if parity is not None:
        rows, vectors = parity
        if (
            rows.ndim != 1
            or vectors.shape != (len(rows), manifest.dim)
            or (len(rows) and not (rows.min() >= 0 and rows.max() < len(users.user_ids)))
        ):
            message = f"parity sample: rows {rows.shape} / vectors {vectors.shape} do not fit"
            raise _invalid(path, message, Check.USER_TABLE)
        parity = (users.user_ids[rows], vectors)
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
        parity=parity,
    )
