"""A cached user vector is used only when it is what this service wrote for that key: a
finite unit vector with a matching tag. Anything else is recomputed and replaced."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from service.app import create_app
from service.cache import LocalEmbeddingCache
from service.recaller import cache_key, seal, unseal
from service.schemas import RecallRequest
from tests.service.client import AppClient
from tests.service.conftest import make_settings

REQUEST = {"user_id": "3", "k": 10}


@pytest.fixture
def cached(snapshots: tuple[Path, list[str]]) -> Iterator[tuple[AppClient, LocalEmbeddingCache]]:
    cache = LocalEmbeddingCache()
    with AppClient(create_app(make_settings(snapshots[0]), cache=cache)) as client:
        yield client, cache


def garbage(key: str, vector: np.ndarray) -> dict[str, bytes]:
    dim = len(vector)
    return {
        "zero": seal(key, np.zeros(dim)),
        "nan": seal(key, np.full(dim, np.nan)),
        "huge": seal(key, vector * 1e30),
        "negated, tagged by hand without the key": (-vector).astype(np.float32).tobytes()
        + seal("another-key", -vector)[-8:],
        "negated, untagged": (-vector).astype(np.float32).tobytes(),
        "another key's vector": seal(key + "x", np.roll(vector, 1)),
        "short": b"\x00" * 7,
        "not a vector": b"hello world",
    }


CASES = list(garbage("k", np.ones(8) / np.sqrt(8)))


@pytest.mark.parametrize("case", CASES)
def test_a_damaged_cached_vector_is_recomputed(
    cached: tuple[AppClient, LocalEmbeddingCache], case: str
) -> None:
    client, cache = cached
    first = client.post("/v1/recall", json=REQUEST).json()
    assert first["user"]["source"] == "computed"
    assert client.post("/v1/recall", json=REQUEST).json()["user"]["source"] == "cache"
    key = cache_key("recall:uvec", first["snapshot"], RecallRequest(**REQUEST))
    stored = cache.get_many([key])[0]
    assert stored is not None
    vector = unseal(key, stored, (len(stored) - 8) // 4)
    assert vector is not None
    cache.set_many({key: garbage(key, vector)[case]}, 60)
    again = client.post("/v1/recall", json=REQUEST).json()
    assert again["user"]["source"] == "computed"
    assert again["items"] == first["items"]
    fixed = cache.get_many([key])[0]
    assert fixed == stored  # replaced by the right value
    metrics = client.get("/metrics").text
    assert "recall_cache_invalid_total 1.0" in metrics


def test_seal_round_trips_and_binds_the_key() -> None:
    vector = np.arange(4, dtype=np.float32)
    blob = seal("a", vector)
    unsealed: Callable[[str], np.ndarray | None] = lambda key: unseal(key, blob, 4)  # noqa: E731
    np.testing.assert_array_equal(unsealed("a"), vector)
    assert unsealed("b") is None
    assert unseal("a", blob[:-1] + bytes([blob[-1] ^ 1]), 4) is None


def test_keys_that_share_a_long_prefix_get_different_tags() -> None:
    vector = np.ones(4, dtype=np.float32) / 2
    long_prefix = "recall:uvec:20261202T000000Z-0000abcd:" + "u" * 80
    blob = seal(long_prefix + "1", vector)
    assert unseal(long_prefix + "2", blob, 4) is None
