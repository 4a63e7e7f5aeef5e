"""RecallBatcher: concurrent requests share one pass, answers match one-at-a-time answers,
and a request that fails validation fails alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from index_builder.snapshot import load_snapshot
from service.batcher import RecallBatcher
from service.cache import LocalEmbeddingCache
from service.engine import RecallEngine
from service.errors import ServiceError
from service.metrics import Metrics
from service.recaller import Recaller
from service.schemas import RecallRequest
from service.settings import BatchSettings, CacheSettings


@pytest.fixture(scope="module")
def engine(snapshots: tuple[Path, list[str]]) -> RecallEngine:
    root, versions = snapshots
    return RecallEngine(load_snapshot(root, versions[-1]))


def batcher(max_size: int = 32) -> tuple[RecallBatcher, Metrics]:
    metrics = Metrics()
    recaller = Recaller(LocalEmbeddingCache(), metrics, CacheSettings())
    return RecallBatcher(recaller, BatchSettings(max_size=max_size), metrics), metrics


def batches(metrics: Metrics) -> tuple[float, float]:
    """(batches answered, requests answered) from the batch-size histogram."""
    count = metrics.registry.get_sample_value("recall_batch_size_count") or 0.0
    total = metrics.registry.get_sample_value("recall_batch_size_sum") or 0.0
    return count, total


def test_concurrent_requests_are_answered_in_one_batch_like_single_ones(
    engine: RecallEngine,
) -> None:
    requests = [RecallRequest(user_id=str(u), k=5) for u in range(1, 9)]
    alone = [Recaller(LocalEmbeddingCache(), Metrics(), CacheSettings()).recall(engine, [r])[0]
             for r in requests]  # fmt: skip
    together, metrics = batcher()

    async def run() -> list[dict]:
        return await asyncio.gather(*(together.recall(engine, [r]) for r in requests))

    bodies = asyncio.run(run())
    assert batches(metrics) == (1.0, 8.0)
    for one, many in zip(alone, bodies, strict=True):  # a batched forward: float noise only
        assert [i["item_id"] for i in many["items"]] == [i["item_id"] for i in one["items"]]
        scores = zip(many["items"], one["items"], strict=True)
        assert all(abs(a["score"] - b["score"]) < 1e-5 for a, b in scores)
        assert many["user"] == one["user"]


def test_batches_never_exceed_max_size(engine: RecallEngine) -> None:
    small, metrics = batcher(max_size=3)

    async def run() -> list[dict]:
        return await asyncio.gather(
            *(small.recall(engine, [RecallRequest(user_id=str(u))]) for u in range(1, 8))
        )

    assert len(asyncio.run(run())) == 7
    assert batches(metrics) == (3.0, 7.0)  # 3 + 3 + 1


def test_a_bad_request_fails_alone_and_similar_items_share_the_pass(
    engine: RecallEngine,
) -> None:
    shared, metrics = batcher()
    item = str(engine.snapshot.item_ids[0])

    async def run() -> list[object]:
        return await asyncio.gather(
            shared.recall(engine, [RecallRequest(user_id="1", k=3)]),
            shared.recall(engine, [RecallRequest(features={"shoe_size": 1})]),
            shared.similar(engine, item, 4),
            shared.similar(engine, "no-such-item", 4),
            return_exceptions=True,
        )

    good, bad, similar, missing = asyncio.run(run())
    assert isinstance(good, dict) and len(good["items"]) == 3
    assert isinstance(bad, ServiceError) and bad.code == "unknown_feature"
    assert bad.message.startswith("body.features.shoe_size")
    assert isinstance(similar, dict) and len(similar["items"]) == 4
    assert item not in [i["item_id"] for i in similar["items"]]
    assert isinstance(missing, ServiceError) and missing.code == "not_found"
    assert batches(metrics)[0] == 1.0
