"""Training/serving parity: the vector `recall serve` computes for a known user is the offline one.

The users picked have more than ``max_len`` known items, and the newest of them has no id row
(its only interaction is the user's validation row, and the model is fitted on train rows
only), so a history window cut before dropping unknown tokens would differ from one cut after.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from index_builder.build import BuildOptions, build_snapshot
from index_builder.catalogue import load_catalogue
from models.artifact import load_artifact
from models.config import TrainConfig
from models.experiment import run_training
from models.features import UNKNOWN
from models.inputs import Inputs
from models.synth import write_synthetic
from models.train import user_vectors
from service.recaller import unseal
from tests.integration.conftest import REDIS_URL, recall_serve
from tests.models.conftest import ML100K_CONFIG

pytestmark = pytest.mark.slow
MAX_LEN = 5


@dataclasses.dataclass
class World:
    snapshots: Path
    version: str
    users: list[str]  # external ids of the users whose vectors are compared
    offline: dict[str, np.ndarray]


def add_fresh_items(folder: Path, users: list[str]) -> None:
    """Give each user a never-seen item as their second-to-last (validation) interaction."""
    inter = folder / f"{folder.name}.inter"
    lines = inter.read_text().splitlines()
    rows = [line.split("\t") for line in lines[1:]]
    last = {u: max(float(r[3]) for r in rows if r[0] == u) for u in users}
    extra = []
    for n, user in enumerate(users):
        extra.append(f"{user}\tfresh {n}!\t5\t{last[user] + 1}")  # spaces and punctuation
        extra.append(f"{user}\t1\t5\t{last[user] + 2}")
    inter.write_text("\n".join([*lines, *extra]) + "\n")


@pytest.fixture(scope="module", params=["history", "sequence"])
def world(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> World:
    """The ml-100k features on a small catalogue, the user's items mean-pooled (``history``) or
    read in order by the causal self-attention encoder (``sequence``)."""
    base = tmp_path_factory.mktemp("parity")
    folder = write_synthetic(base / "par", 60, 80, 1800, seed=3, clusters=4, progress=False)
    counts: dict[str, int] = {}
    for line in (folder / "par.inter").read_text().splitlines()[1:]:
        counts[line.split("\t")[0]] = counts.get(line.split("\t")[0], 0) + 1
    users = [u for u, c in sorted(counts.items(), key=lambda x: -x[1])][:4]
    assert all(counts[u] > 2 * MAX_LEN for u in users)
    add_fresh_items(folder, users)
    raw = tomllib.loads(ML100K_CONFIG.read_text())
    raw["dataset"] = {"name": "par", "dir": str(folder)}
    raw["model"] = {"hidden": [16], "dim": 8}
    raw["train"] = {"epochs": 2, "batch_size": 64, "refit": False}
    for feature in raw["user_features"]:
        if feature["kind"] == "history":
            feature.update(kind=request.param, max_len=MAX_LEN)
    config = TrainConfig.from_dict(raw)
    run_training(config, "leave-last-out", base / "artifact", progress=False)
    snapshots = base / "snapshots"
    options = BuildOptions(index="flat", progress=False, tuning_users=20)
    version = build_snapshot(base / "artifact", snapshots, options)

    artifact = load_artifact(snapshots / version)
    catalogue = load_catalogue(artifact)
    data = catalogue.data
    rows = np.array([list(data.user_ids).index(u) for u in users])
    # The offline path: the evaluation's inputs (latest history of the known rows).
    inputs = Inputs(data, catalogue.histories, artifact.user_spec, artifact.item_spec)
    vectors = user_vectors(artifact.model, inputs, rows).numpy()
    # The case is the one that matters: unknown tokens inside the last MAX_LEN items.
    h = catalogue.histories
    for row in rows:
        last = data.item_tokens[h.items[h.offsets[row] : h.offsets[row + 1]]][-MAX_LEN:]
        assert (last == UNKNOWN).any()
    return World(snapshots, version, users, dict(zip(users, vectors, strict=True)))


@pytest.fixture
def served(world: World, key_prefix: str, tmp_path: Path) -> Iterator[str]:
    env = {
        "RECALL_REDIS_URL": REDIS_URL,
        "RECALL_CACHE__KEY_PREFIX": key_prefix,
        "RECALL_CACHE__WRITE_BEHIND": "false",  # in Redis before the answer
        "RECALL_CACHE__LOCAL_MAX_ENTRIES": "0",
    }
    with recall_serve(world.snapshots, tmp_path, **env) as base:
        yield base


def test_served_user_vectors_equal_the_offline_ones(
    world: World, served: str, real_redis: redis.Redis, key_prefix: str
) -> None:
    with httpx.Client(base_url=served, timeout=10) as client:
        for user in world.users:
            response = client.post("/v1/recall", json={"user_id": user, "k": 5, "explain": True})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["user"] == {"known": True, "source": "computed"}
            assert body["explain"]["history_length"] == MAX_LEN
            keys = list(real_redis.scan_iter(match=f"{key_prefix}:{world.version}:{user}:*"))
            assert len(keys) == 1
            blob = real_redis.get(keys[0])
            assert isinstance(blob, bytes)
            served_vector = unseal(keys[0].decode(), blob, len(world.offline[user]))
            assert served_vector is not None
            np.testing.assert_allclose(served_vector, world.offline[user], atol=1e-6)
