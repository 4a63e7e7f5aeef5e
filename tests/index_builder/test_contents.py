"""Snapshots whose checksums are right but whose contents are wrong are refused by the load,
naming the check, before a service could swap them in."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from index_builder.manifest import MANIFEST, new_version
from index_builder.snapshot import SnapshotInvalidError, load_snapshot
from tests.index_builder.helpers import clone, resum


def edit_tensors(path: Path, edit: Callable[[dict[str, np.ndarray]], None]) -> None:
    tensors = {k: v.copy() for k, v in load_file(str(path)).items()}
    edit(tensors)
    save_file(tensors, str(path))


def set_value(path: Path, tensor: str, row: int, value: int) -> None:
    def edit(tensors: dict[str, np.ndarray]) -> None:
        tensors[tensor][row] = value

    edit_tensors(path, edit)


def rename_id(tensors: dict[str, np.ndarray], prefix: str) -> None:
    """Make the second id equal the first (same byte length: pad or cut to fit)."""
    data, offsets = tensors[f"{prefix}.utf8"], tensors[f"{prefix}.offsets"]
    first = bytes(data[offsets[0] : offsets[1]])
    second_len = int(offsets[2] - offsets[1])
    ids = [bytes(data[offsets[i] : offsets[i + 1]]) for i in range(len(offsets) - 1)]
    ids[1] = first
    lengths = np.array([len(i) for i in ids], dtype=np.int64)
    tensors[f"{prefix}.utf8"] = np.frombuffer(b"".join(ids), dtype=np.uint8).copy()
    tensors[f"{prefix}.offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    assert second_len >= 0


def duplicate_item_id(folder: Path) -> None:
    edit_tensors(folder / "items.safetensors", lambda t: rename_id(t, "item_ids"))


def duplicate_user_id(folder: Path) -> None:
    edit_tensors(folder / "users.safetensors", lambda t: rename_id(t, "user_ids"))


def rewrite_index(folder: Path, edit: Callable[[np.ndarray], None], labels_from: int = 0) -> None:
    """The item vectors, edited, in a flat index; labels start at ``labels_from`` (an id map
    when it is not 0)."""
    old = faiss.read_index(str(folder / "index.faiss"))
    vectors = old.reconstruct_n(0, old.ntotal)
    edit(vectors)
    if labels_from:
        index = faiss.IndexIDMap(faiss.IndexFlatIP(old.d))
        index.add_with_ids(vectors, np.arange(old.ntotal, dtype=np.int64) + labels_from)
    else:
        index = faiss.IndexFlatIP(old.d)
        index.add(vectors)
    faiss.write_index(index, str(folder / "index.faiss"))


def nan_item_vector(folder: Path) -> None:
    rewrite_index(folder, lambda vectors: vectors.__setitem__(5, np.nan))


def unnormalised_item_vector(folder: Path) -> None:
    rewrite_index(folder, lambda vectors: vectors.__setitem__(9, vectors[9] * 3.0))


def labels_outside_the_items(folder: Path) -> None:
    rewrite_index(folder, lambda vectors: None, labels_from=10)


def seen_item_out_of_range(folder: Path) -> None:
    set_value(folder / "users.safetensors", "seen.items", 3, 10_000)


def short_user_feature(folder: Path) -> None:
    def edit(t: dict[str, np.ndarray]) -> None:
        name = next(k for k in t if k.startswith("feature."))
        t[name] = t[name][:-2].copy()

    edit_tensors(folder / "users.safetensors", edit)


def user_feature_past_its_vocabulary(folder: Path) -> None:
    set_value(folder / "users.safetensors", "feature.gender", 0, 999)


def item_token_past_the_vocabulary(folder: Path) -> None:
    set_value(folder / "items.safetensors", "item_tokens", 0, 10**6)


def seen_offsets_backwards(folder: Path) -> None:
    def edit(t: dict[str, np.ndarray]) -> None:
        t["seen.offsets"][2], t["seen.offsets"][3] = t["seen.offsets"][3], t["seen.offsets"][2]

    edit_tensors(folder / "users.safetensors", edit)


DAMAGE = {
    "duplicate item id": (duplicate_item_id, "duplicate_ids"),
    "duplicate user id": (duplicate_user_id, "duplicate_ids"),
    "NaN item vector": (nan_item_vector, "item_vectors_invalid"),
    "item vector of norm 3": (unnormalised_item_vector, "item_vectors_invalid"),
    "index labels outside the items": (labels_outside_the_items, "index_labels_out_of_range"),
    "seen item out of range": (seen_item_out_of_range, "user_table_invalid"),
    "user feature with fewer rows than users": (short_user_feature, "user_table_invalid"),
    "user feature past its vocabulary": (user_feature_past_its_vocabulary, "user_table_invalid"),
    "item token past the vocabulary": (item_token_past_the_vocabulary, "item_table_invalid"),
    "seen offsets going backwards": (seen_offsets_backwards, "user_table_invalid"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_wrong_contents_with_right_checksums_are_refused(
    built: tuple[Path, str], tmp_path: Path, kind: str
) -> None:
    source_root, source = built
    damage, code = DAMAGE[kind]
    version = new_version()
    folder = clone(source_root / source, tmp_path, version)
    damage(folder)
    resum(folder)
    with pytest.raises(SnapshotInvalidError) as caught:
        load_snapshot(tmp_path, version)
    assert caught.value.code == code, str(caught.value)
    assert "rebuild the snapshot" in str(caught.value)


def test_an_edited_manifest_fails_its_own_checksum(built: tuple[Path, str], tmp_path: Path) -> None:
    source_root, source = built
    version = new_version()
    folder = clone(source_root / source, tmp_path, version)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["index"]["params"] = {"nprobe": 1}  # plausible, and the files still match
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SnapshotInvalidError) as caught:
        load_snapshot(tmp_path, version)
    assert caught.value.code == "manifest_checksum_mismatch"


def test_the_untouched_snapshot_passes_every_content_check(built: tuple[Path, str]) -> None:
    root, version = built
    assert load_snapshot(root, version).version == version
