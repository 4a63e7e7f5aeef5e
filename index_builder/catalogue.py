"""The artifact's data as the builder needs it: item vectors, tuning queries, item/user tables."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from tqdm import tqdm

from index_builder.tables import ItemTable, UserTable
from models.artifact import Artifact
from models.data import load_dataset, make_split
from models.encoding import EncodedData, Histories, encode_dataset
from models.inputs import FeatureTable, Inputs
from models.two_tower import TwoTower

log = logging.getLogger(__name__)
ATTRIBUTE_KINDS = ("multi_hot", "categorical")  # item features the service can filter on


@dataclass
class Catalogue:
    """Encoded users and items of the artifact's dataset, and what the model could know:
    the split's train + valid interactions (``known_rows``), as time-ordered histories."""

    data: EncodedData
    known_rows: np.ndarray  # [S] int64 interaction rows
    histories: Histories
    data_dir: Path
    data_fingerprint: str
    data_changed: bool  # the dataset differs from the one the artifact was trained on


def load_catalogue(artifact: Artifact, data_dir: Path | None = None) -> Catalogue:
    """Load and encode the artifact's dataset (``data_dir`` overrides where it lives)."""
    info = artifact.data
    directory = Path(data_dir or info.get("data_dir") or artifact.config.data_dir)
    dataset = load_dataset(directory, artifact.config.dataset)
    split = make_split(dataset.interactions, info["split"]["protocol"], info["split"]["seed"])
    changed = dataset.fingerprint != info.get("data_fingerprint")
    if changed:
        log.warning(
            "%s differs from the data the model was trained on; new items get "
            "vectors from their features",
            directory,
        )
    elif split.fingerprint() != info["split"].get("fingerprint"):
        log.warning("split of %s differs from the training split", directory)
    data = encode_dataset(dataset, artifact.user_spec, artifact.item_spec)
    if data.n_items == 0:
        raise ValueError(f"{directory}: the catalogue has no items; nothing to index")
    known = np.sort(np.concatenate([split.train, split.valid])).astype(np.int64)
    return Catalogue(
        data, known, Histories.build(data, known), directory, dataset.fingerprint, changed
    )


@torch.inference_mode()
def embed_items(
    model: TwoTower,
    item_features: dict[str, np.ndarray],
    batch_size: int = 8192,
    progress: bool = False,
) -> np.ndarray:
    """Item tower over encoded features (each ``[n, ...]``) -> unit vectors ``[n, dim]`` float32.

    Batches are written into one preallocated array, so memory is n * dim * 4 bytes plus one
    batch.
    """
    model.eval()
    n = len(next(iter(item_features.values())))
    table = FeatureTable(model.item_tower.spec, item_features)
    item_vectors = np.empty((n, model.config.dim), dtype=np.float32)
    for start in tqdm(range(0, n, batch_size), desc="embed items", disable=not progress):
        stop = min(n, start + batch_size)
        item_vectors[start:stop] = model.item_vectors(table.rows(torch.arange(start, stop))).numpy()
    faiss.normalize_L2(item_vectors)  # exact unit norm in float32, so scores are cosines
    return item_vectors


def query_vectors(
    artifact: Artifact, catalogue: Catalogue, max_users: int, seed: int
) -> np.ndarray:
    """User vectors ``[q, dim]`` of up to ``max_users`` users with known interactions (latest
    histories and profile features through the user tower), seeded sample."""
    return sampled_users(artifact, catalogue, max_users, seed)[1]


def sampled_users(
    artifact: Artifact, catalogue: Catalogue, max_users: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, vectors)``: ``query_vectors`` with the users' rows in the user table."""
    counts = np.diff(catalogue.histories.offsets)
    users = np.flatnonzero(counts > 0)
    if len(users) == 0:
        users = np.arange(catalogue.data.n_users)
    if len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    inputs = Inputs(catalogue.data, catalogue.histories, artifact.user_spec, artifact.item_spec)
    with torch.inference_mode():
        vectors = artifact.model.user_vectors(inputs.users(users)).numpy()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    faiss.normalize_L2(vectors)
    return users.astype(np.int64), vectors


def item_table(artifact: Artifact, catalogue: Catalogue) -> ItemTable:
    """Item ids, attributes, item-id tokens and known-interaction counts of the catalogue."""
    data = catalogue.data
    features = artifact.item_spec.of_kind(*ATTRIBUTE_KINDS)
    return ItemTable(
        item_ids=data.item_ids,
        item_tokens=data.item_tokens,
        popularity=np.bincount(data.inter_items[catalogue.known_rows], minlength=data.n_items),
        attributes={f.name: data.item_features[f.name] for f in features},
        vocabularies={
            f.name: {"kind": f.kind, "vocab": artifact.item_spec.vocabs[f.name]} for f in features
        },
    )


def user_table(catalogue: Catalogue) -> UserTable:
    """Every user of the dataset with encoded profile features and known items in time order."""
    data, histories = catalogue.data, catalogue.histories
    return UserTable(data.user_ids, data.user_features, histories.offsets, histories.items)
