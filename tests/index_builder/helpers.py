"""Helpers shared by the snapshot tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from index_builder.manifest import MANIFEST, file_sha256, seal_manifest


def clone(source: Path, root: Path, version: str, **changes: object) -> Path:
    """Copy a snapshot folder under a new version, editing top-level manifest keys."""
    target = root / version
    shutil.copytree(source, target)
    manifest = json.loads((target / MANIFEST).read_text())
    manifest.update({"version": version, **changes})
    (target / MANIFEST).write_text(json.dumps(seal_manifest(manifest)))
    return target


def flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def resum(folder: Path) -> None:
    """Re-checksum every file and re-seal the manifest: only the contents are wrong."""
    manifest = json.loads((folder / MANIFEST).read_text())
    for name in manifest["files"]:
        path = folder / name
        manifest["files"][name] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    (folder / MANIFEST).write_text(json.dumps(seal_manifest(manifest)))
