"""The item and user tables of a snapshot, as safetensors (numpy arrays only, no pickle).

``items.safetensors``: ``item_ids.utf8`` [bytes] uint8 and ``item_ids.offsets`` [I + 1] int64
(item row r is ``utf8[offsets[r]:offsets[r + 1]]``), ``item_tokens`` [I] int64 (item row ->
item-id vocabulary row, for history inputs), ``popularity`` [I] int64 (known interactions),
``attr.<name>`` (encoded filterable attributes, e.g. genres [I, max_len] int64, 0 = padding).
``items.json`` holds each attribute's kind and vocabulary (token -> row).

``users.safetensors``: ``user_ids.utf8`` / ``user_ids.offsets`` [U + 1] as above,
``feature.<name>`` (each encoded user feature, leading axis U), ``seen.offsets`` [U + 1] int64
and ``seen.items`` [S] int64 (CSR: user row u saw item rows ``items[offsets[u]:offsets[u+1]]``
in time order).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from index_builder.manifest import ITEMS, ITEMS_JSON, PARITY, USERS  # noqa: E402


def _as_other_files(path: Path) -> None:
    """Give ``path`` the mode an ordinary file gets here (safetensors writes 0600), so every
    file of a snapshot is readable by the same users (a service running as another user)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def encode_strings(values: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``[n]`` strings -> (utf-8 bytes ``[total]`` uint8, offsets ``[n + 1]`` int64)."""
    encoded = [str(value).encode("utf-8") for value in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


def decode_strings(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Inverse of encode_strings: ``[n]`` object array of str; ValueError if inconsistent."""
    if (
        data.dtype != np.uint8
        or offsets.dtype != np.int64
        or offsets.ndim != 1
        or len(offsets) == 0
        or offsets[0] != 0
        or offsets[-1] != len(data)
        or np.any(np.diff(offsets) < 0)
    ):
        raise ValueError("string offsets do not match the bytes")
    raw = data.tobytes()
    bounds = offsets.tolist()
    out = np.empty(len(bounds) - 1, dtype=object)
    out[:] = [raw[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return out


@dataclass
class ItemTable:
    item_ids: np.ndarray  # [I] object (str)
    item_tokens: np.ndarray  # [I] int64
    popularity: np.ndarray  # [I] int64
    attributes: dict[str, np.ndarray]  # name -> [I, ...] int64
    vocabularies: dict[str, Any]  # name -> {"kind", "vocab"}


@dataclass
class UserTable:
    user_ids: np.ndarray  # [U] object (str)
    features: dict[str, np.ndarray]  # name -> [U, ...]
    seen_offsets: np.ndarray  # [U + 1] int64
    seen_items: np.ndarray  # [S] int64


def write_items(folder: Path, table: ItemTable) -> None:
    data, offsets = encode_strings(table.item_ids.tolist())
    tensors = {
        "item_ids.utf8": data,
        "item_ids.offsets": offsets,
        "item_tokens": np.ascontiguousarray(table.item_tokens, dtype=np.int64),
        "popularity": np.ascontiguousarray(table.popularity, dtype=np.int64),
    }
    for name, values in table.attributes.items():
        tensors[f"attr.{name}"] = np.ascontiguousarray(values, dtype=np.int64)
    save_file(tensors, str(folder / ITEMS))
    _as_other_files(folder / ITEMS)
    payload = {"attributes": table.vocabularies}
    (folder / ITEMS_JSON).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_items(folder: Path) -> ItemTable:
    tensors = load_file(str(folder / ITEMS))
    vocabularies = json.loads((folder / ITEMS_JSON).read_text())["attributes"]
    attributes = {k.removeprefix("attr."): v for k, v in tensors.items() if k.startswith("attr.")}
    return ItemTable(
        item_ids=decode_strings(tensors["item_ids.utf8"], tensors["item_ids.offsets"]),
        item_tokens=tensors["item_tokens"],
        popularity=tensors["popularity"],
        attributes=attributes,
        vocabularies=vocabularies,
    )


def write_users(folder: Path, table: UserTable) -> None:
    data, offsets = encode_strings(table.user_ids.tolist())
    tensors = {
        "user_ids.utf8": data,
        "user_ids.offsets": offsets,
        "seen.offsets": np.ascontiguousarray(table.seen_offsets, dtype=np.int64),
        "seen.items": np.ascontiguousarray(table.seen_items, dtype=np.int64),
    }
    for name, values in table.features.items():
        tensors[f"feature.{name}"] = np.ascontiguousarray(values)
    save_file(tensors, str(folder / USERS))
    _as_other_files(folder / USERS)


def read_users(folder: Path) -> UserTable:
    tensors = load_file(str(folder / USERS))
    features = {
        k.removeprefix("feature."): v for k, v in tensors.items() if k.startswith("feature.")
    }
    user_ids = decode_strings(tensors["user_ids.utf8"], tensors["user_ids.offsets"])
    seen_offsets, seen_items = tensors["seen.offsets"], tensors["seen.items"]
    if len(seen_offsets) != len(user_ids) + 1 or seen_offsets[-1] != len(seen_items):
        raise ValueError("seen.offsets does not match the users and seen.items")
    return UserTable(user_ids, features, seen_offsets, seen_items)


def write_parity(folder: Path, user_rows: np.ndarray, vectors: np.ndarray) -> None:
    """``PARITY``: rows of sampled users in the user table and their offline vectors."""
    tensors: dict[str, np.ndarray] = {
        "user_rows": np.ascontiguousarray(user_rows, dtype=np.int64),
        "vectors": np.ascontiguousarray(vectors, dtype=np.float32),
    }
    save_file(tensors, str(folder / PARITY))
    _as_other_files(folder / PARITY)


def read_parity(folder: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """``(user_rows, vectors)`` from ``PARITY``; None for a snapshot built without it."""
    if not (folder / PARITY).exists():
        return None
    tensors = load_file(str(folder / PARITY))
    return tensors["user_rows"], tensors["vectors"]
