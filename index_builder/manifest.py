"""Snapshot versions, errors, and the manifest: what a snapshot folder must hold, and its checks.

``manifest.json`` (written last, so its presence marks a finished folder)::

    {"format_version": 2, "version": "20250101T120000Z-0a1b2c3d", "created": "...+00:00",
     "source": {artifact path/fingerprint, dataset, data fingerprint, split},
     "dim": 64, "metric": "inner_product",
     "counts": {"items": I, "users": U, "seen_interactions": S},
     "index": {"type", "factory", "params", "reason", "nlist", "refine", "estimated_bytes",
               "memory_budget_bytes"},
     "tuning": {"k", "target_recall", "recall", "target_reached", "queries", "trials"},
     "latency_ms": {"p50", "p99", "batch64_per_query", "queries", "k", "threads": 1},
     "offline_metrics": {...the artifact's metrics.json...},
     "overrides": ["ann_recall_below_target", ...],  # gates the builder was told to let pass
     "files": {"index.faiss": {"sha256": "...", "bytes": N}, ...every other file...},
     "manifest_sha256": "..."}

``manifest_sha256`` is the sha256 of the rest (``manifest_digest``), so the manifest is covered
too: a hand edit or a flipped byte in it fails ``manifest_checksum_mismatch``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

FORMAT_VERSION = 2  # 2: manifest_sha256; 1 (no checksum of the manifest) still loads
READABLE_FORMATS = (1, 2)
MANIFEST = "manifest.json"
MANIFEST_SHA256 = "manifest_sha256"
METRIC = "inner_product"
VERSION_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
ARTIFACT_FILES = (
    "model.safetensors",
    "config.json",
    "features.json",
    "data.json",
    "metrics.json",
    "training.json",
)
# The one table of a snapshot's file names (index_builder.tables and .build write them).
INDEX, ITEMS, ITEMS_JSON, USERS = (
    "index.faiss",
    "items.safetensors",
    "items.json",
    "users.safetensors",
)
SNAPSHOT_FILES = (INDEX, ITEMS, ITEMS_JSON, USERS)
PARITY = "parity.safetensors"  # offline vectors of sampled users (index_builder.gates); optional
REQUIRED_FILES = ARTIFACT_FILES + SNAPSHOT_FILES
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Check(StrEnum):
    """Every check a snapshot can fail, by the code its error carries (``SnapshotError.code``).

    The service answers each with 409 (``service.errors``), except ``bad_version`` (422).
    """

    NOT_FOUND = "snapshot_not_found"
    BAD_VERSION = "bad_version"
    MISSING_MANIFEST = "missing_manifest"
    BAD_MANIFEST = "bad_manifest"
    MANIFEST_CHECKSUM = "manifest_checksum_mismatch"
    MISSING_FILE = "missing_file"
    SIZE_MISMATCH = "size_mismatch"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    DIM_MISMATCH = "dim_mismatch"
    METRIC_MISMATCH = "metric_mismatch"
    COUNT_MISMATCH = "count_mismatch"
    INDEX_UNREADABLE = "index_unreadable"
    ARTIFACT_UNREADABLE = "artifact_unreadable"
    TABLE_UNREADABLE = "table_unreadable"
    DUPLICATE_IDS = "duplicate_ids"
    INDEX_LABELS = "index_labels_out_of_range"
    ITEM_VECTORS = "item_vectors_invalid"
    ITEM_TABLE = "item_table_invalid"
    USER_TABLE = "user_table_invalid"
    WARMUP_FAILED = "warmup_failed"
    LOAD_FAILED = "load_failed"
    # promotion gates (index_builder.gates, service.promotion)
    ANN_RECALL = "ann_recall_below_target"
    BELOW_BASELINE = "quality_below_baseline"
    REGRESSION = "quality_regression"
    PARITY = "parity_mismatch"
    GOLDEN = "golden_queries_failed"


class SnapshotError(Exception):
    """Base of snapshot errors; ``code`` is machine-readable, the message says what to do."""

    code = "snapshot_error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class SnapshotNotFoundError(SnapshotError):
    """No snapshot folder with that version."""

    code = Check.NOT_FOUND


class SnapshotInvalidError(SnapshotError):
    """A snapshot that fails a check; ``code`` names the check (e.g. ``checksum_mismatch``)."""

    code = "invalid"


class SnapshotExistsError(SnapshotError):
    """Publishing would overwrite an existing version."""

    code = "exists"


def new_version(now: datetime | None = None) -> str:
    """``YYYYMMDDTHHMMSSZ-<8 hex>`` from ``now`` (UTC; default: the current time)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def version_time(version: str) -> datetime:
    """The UTC time a version's name carries (``YYYYMMDDTHHMMSSZ``)."""
    return datetime.strptime(version[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def check_version(version: str) -> str:
    """Return ``version`` if it matches VERSION_PATTERN; never touches the file system."""
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise SnapshotInvalidError(
            f"{version!r} is not a snapshot version; expected YYYYMMDDTHHMMSSZ-<8 hex>, "
            "e.g. from `recall snapshot list`",
            Check.BAD_VERSION,
        )
    return version


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, compact), its own
    ``manifest_sha256`` left out."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_SHA256}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def seal_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with ``manifest_sha256`` set for its current contents."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_SHA256}
    return {**body, MANIFEST_SHA256: manifest_digest(body)}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Manifest:
    """Checksum every file in ``folder``, then write ``manifest.json`` last (fsynced),
    covered by its own checksum."""
    files = {
        path.name: {"sha256": file_sha256(path), "bytes": path.stat().st_size}
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != MANIFEST
    }
    manifest = seal_manifest({**manifest, "format_version": FORMAT_VERSION, "files": files})
    parsed = Manifest.model_validate(manifest)  # a builder bug fails here, before the write
    with open(folder / MANIFEST, "w") as handle:
        handle.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return parsed


def read_manifest(path: Path) -> Manifest:
    """Parse and shape-check ``path/manifest.json`` (files are not opened)."""
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError as exc:
        raise SnapshotInvalidError(
            f"{manifest_path}: missing {MANIFEST}; the folder is unfinished, rebuild it with "
            "`recall build-index`",
            Check.MISSING_MANIFEST,
        ) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotInvalidError(
            f"{manifest_path}: not valid JSON ({exc}); rebuild the snapshot", "bad_manifest"
        ) from exc
    sealed = isinstance(manifest, dict) and manifest.get("format_version", 1) != 1
    if sealed and manifest.get(MANIFEST_SHA256) != manifest_digest(manifest):
        raise SnapshotInvalidError(
            f"{manifest_path}: manifest_sha256 does not match the manifest (edited or "
            "corrupted); rebuild the snapshot",
            Check.MANIFEST_CHECKSUM,
        )
    parsed = _parse_manifest(manifest, path.name)
    if isinstance(parsed, str):
        raise SnapshotInvalidError(
            f"{manifest_path}: {parsed}; rebuild the snapshot", Check.BAD_MANIFEST
        )
    return parsed


class Counts(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    items: int = Field(ge=0)
    users: int = Field(ge=0)
    seen_interactions: int = Field(ge=0)


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    sha256: str = Field(pattern=_SHA256.pattern)
    bytes: int = Field(ge=0)


class IndexInfo(BaseModel):
    """What the builder chose (``index_builder.indexes.IndexPlan``) and its tuned params."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: str
    factory: str = ""
    params: dict[str, Any]
    reason: str = ""
    build_params: dict[str, Any] = Field(default_factory=dict)
    nlist: int = 0
    refine: Any = ""  # the refine stage's factory, empty without one
    estimated_bytes: int = 0
    memory_budget_bytes: int | None = None


class Manifest(BaseModel):
    """``manifest.json``, typed (layout in the module docstring); ``read_manifest`` parses it."""

    model_config = ConfigDict(extra="allow", strict=True)

    format_version: Literal[1, 2]
    version: str
    created: str | None = None
    source: dict[str, Any] = Field(default_factory=dict)
    dim: int = Field(ge=1)
    metric: str
    counts: Counts
    index: IndexInfo
    tuning: dict[str, Any] = Field(default_factory=dict)
    latency_ms: dict[str, Any] = Field(default_factory=dict)
    offline_metrics: dict[str, Any] = Field(default_factory=dict)
    overrides: list[str] = Field(default_factory=list)  # gates let pass at publish
    files: dict[str, FileEntry]
    manifest_sha256: str | None = None

    @field_validator("files")
    @classmethod
    def _plain_and_complete(cls, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for name in files:
            if "/" in name or "\\" in name or name.startswith(".") or name == MANIFEST:
                raise ValueError(f"file name {name!r} is not a plain file name")
        missing = [name for name in REQUIRED_FILES if name not in files]
        if missing:
            raise ValueError(f"does not list {missing}")
        return files

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def _parse_manifest(raw: Any, folder_name: str) -> Manifest | str:
    """The manifest, or the first problem with it."""
    if not isinstance(raw, dict):
        return "not a JSON object"
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"]) or "manifest"
        return f"{where}: {err['msg']}"
    if manifest.version != folder_name:
        return f"version {manifest.version!r} does not match the folder name"
    return manifest


def verify_snapshot(path: Path, checksums: bool = True) -> Manifest:
    """Check the manifest, then every listed file's size and (if ``checksums``) sha256.

    Returns the manifest; raises SnapshotInvalidError naming the first bad file.
    """
    path = Path(path)
    check_version(path.name)
    manifest = read_manifest(path)
    for name, entry in manifest.files.items():
        file_path = path / name
        try:
            size = file_path.stat().st_size
        except FileNotFoundError as exc:
            raise SnapshotInvalidError(
                f"{file_path}: missing file listed in the manifest; rebuild the snapshot",
                Check.MISSING_FILE,
            ) from exc
        if size != entry.bytes:
            raise SnapshotInvalidError(
                f"{file_path}: {size} bytes, manifest says {entry.bytes} (truncated or "
                "changed); rebuild the snapshot",
                Check.SIZE_MISMATCH,
            )
        if checksums and file_sha256(file_path) != entry.sha256:
            raise SnapshotInvalidError(
                f"{file_path}: sha256 does not match the manifest (corrupted); rebuild the "
                "snapshot",
                Check.CHECKSUM_MISMATCH,
            )
    return manifest
