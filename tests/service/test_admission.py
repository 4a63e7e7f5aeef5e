"""Admission and fairness of the batcher: bounded queued cost, 503 with Retry-After past it,
big jobs answered in parts between other callers' requests, and one request's failure
answering that request only."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from index_builder.snapshot import load_snapshot
from service.batcher import RecallBatcher, cost
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


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Ticking(Clock):
    """A clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step: float):
        super().__init__()
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def make(clock: Clock | None = None, **settings: Any) -> tuple[RecallBatcher, Metrics]:
    metrics = Metrics()
    recaller = Recaller(LocalEmbeddingCache(), metrics, CacheSettings())
    batcher = RecallBatcher(recaller, BatchSettings(**settings), metrics, clock or Clock())
    return batcher, metrics


def test_cost_counts_k_and_exclusions() -> None:
    assert cost(100, 0) == 1.0
    assert cost(1000, 1000) == 10.5
    assert cost(10, 0) < cost(100, 0) < cost(100, 50)


@pytest.mark.parametrize("bound", ["max_queued_cost", "max_pending_cost"])
def test_queued_cost_past_the_bound_is_503_with_retry_after(
    engine: RecallEngine, bound: str
) -> None:
    batcher, metrics = make(**{bound: 3.0}, retry_after_s=2)

    async def run() -> list[Any]:
        return await asyncio.gather(
            *(
                batcher.recall(engine, [RecallRequest(user_id=str(u), k=100, exclude_seen=False)])
                for u in range(1, 7)
            ),
            return_exceptions=True,
        )

    answers = asyncio.run(run())
    assert [isinstance(a, dict) for a in answers] == [True] * 3 + [False] * 3
    for refused in answers[3:]:
        assert isinstance(refused, ServiceError) and refused.status == 503
        assert refused.code == "overloaded" and refused.headers == {"Retry-After": "2"}
    assert metrics.registry.get_sample_value("recall_shed_requests_total") == 3.0
    assert batcher.pending_cost == 0.0
    # once the queue has drained, the same requests are admitted again
    again = asyncio.run(run())
    assert sum(isinstance(a, dict) for a in again) == 3


def test_an_idle_batcher_admits_a_job_bigger_than_the_bound(engine: RecallEngine) -> None:
    batcher, _ = make(max_queued_cost=2.0, max_pending_cost=2.0)
    requests = [RecallRequest(user_id=str(u), k=50) for u in range(1, 6)]
    bodies = asyncio.run(batcher.recall(engine, requests, batch=True))
    assert [len(orjson.loads(b)["items"]) for b in bodies] == [50] * 5


def test_requests_are_refused_while_the_oldest_queued_job_waited_too_long(
    engine: RecallEngine,
) -> None:
    clock = Ticking(0.003)  # each request arrives 3 ms after the one before
    batcher, _ = make(clock, shed_after_ms=5.0)

    async def run() -> list[Any]:
        return await asyncio.gather(  # all three queued in one pass, before its flush
            *(batcher.recall(engine, [RecallRequest(user_id=str(u))]) for u in (1, 2, 3)),
            return_exceptions=True,
        )

    first, second, third = asyncio.run(run())
    assert isinstance(first, dict) and isinstance(second, dict)  # 0 and 3 ms
    assert isinstance(third, ServiceError) and third.code == "overloaded"  # 6 ms
    assert "waited 6 ms" in third.message


def test_a_heavy_batch_is_answered_in_parts_with_light_requests_in_between(
    engine: RecallEngine,
) -> None:
    batcher, metrics = make(max_flush_cost=12.0)
    heavy = [RecallRequest(user_id=str(u), k=1000, exclude_seen=False) for u in range(1, 9)]
    order: list[str] = []

    async def track(name: str, call: Any) -> Any:
        result = await call
        order.append(name)
        return result

    async def run() -> list[Any]:
        return await asyncio.gather(
            track("heavy", batcher.recall(engine, heavy, batch=True)),
            *(
                track(f"light{u}", batcher.recall(engine, [RecallRequest(user_id=str(u), k=5)]))
                for u in range(1, 4)
            ),
        )

    rendered, *light = asyncio.run(run())
    heavy_bodies = [orjson.loads(body) for body in rendered]  # rendered as each part was done
    n_items = engine.n_items
    assert [len(b["items"]) for b in heavy_bodies] == [min(1000, n_items)] * 8
    assert all(len(b["items"]) == 5 for b in light)
    assert order[-1] == "heavy"  # the light requests did not wait for the whole heavy batch
    passes = metrics.registry.get_sample_value("recall_batch_size_count")
    assert passes is not None and passes >= 3  # cost(k=1000) = 5.5: two heavy per pass
    alone = Recaller(LocalEmbeddingCache(), Metrics(), CacheSettings()).recall(engine, heavy)
    assert [[i["item_id"] for i in b["items"]] for b in heavy_bodies] == [
        [i["item_id"] for i in b["items"]] for b in alone
    ]


class BreaksOn:
    """An engine whose tower fails when a given user's query is in the batch."""

    def __init__(self, engine: RecallEngine, user_id: str):
        self.engine, self.user_id = engine, user_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def embed(self, queries: list[Any]) -> np.ndarray:
        if any(q.explain.get("request_features") == ["occupation"] for q in queries):
            raise RuntimeError("the tower could not encode this")
        return self.engine.embed(queries)


def test_an_error_inside_a_batch_fails_only_the_request_that_caused_it(
    engine: RecallEngine,
) -> None:
    batcher, _ = make()
    broken: Any = BreaksOn(engine, "2")
    poison = RecallRequest(user_id="2", features={"occupation": "writer"})

    async def run() -> list[Any]:
        innocent = [batcher.recall(broken, [RecallRequest(user_id=str(u))]) for u in range(3, 12)]
        return await asyncio.gather(
            batcher.recall(broken, [poison]), *innocent, return_exceptions=True
        )

    failed, *answered = asyncio.run(run())
    assert isinstance(failed, ServiceError) and failed.code == "internal"
    assert failed.status == 500
    assert all(isinstance(a, dict) and a["items"] for a in answered)


def test_a_light_request_next_to_a_heavy_one_fetches_only_what_it_needs(
    engine: RecallEngine,
) -> None:
    sizes: list[tuple[int, int]] = []  # (queries, k) of each index search

    class Spy:
        def __init__(self, index: Any):
            self.index = index

        def __getattr__(self, name: str) -> Any:
            return getattr(self.index, name)

        def search(self, vectors: np.ndarray, k: int) -> Any:
            sizes.append((len(vectors), k))
            return self.index.search(vectors, k)

    spied = RecallEngine(engine.snapshot)
    spied.index = Spy(engine.index)  # type: ignore[assignment]
    spied.n_items = 600  # as if the catalogue were bigger: fetch sizes below it stay apart
    vectors = engine.embed([engine.resolve(RecallRequest(user_id=u)) for u in ("1", "2")])
    empty = np.empty(0, dtype=np.int64)
    found = spied.search(vectors, [10, 300], [empty, empty], [None, None])
    assert sizes[:2] == [(1, 128), (1, 512)]  # not both at the heavy request's 300
    assert len(found[0].rows) == 10


def test_long_id_lists_map_to_the_same_rows_as_the_dict(engine: RecallEngine) -> None:
    ids = [str(i) for i in engine.snapshot.item_ids.tolist()]
    asked = ids[::-1] + ["no-such-item", "x" * 300, ids[3] + "\0", ""] + ids[:5]
    rows = engine.item_rows(asked)
    expected = [engine.snapshot.item_row[i] for i in asked if i in engine.snapshot.item_row]
    assert rows.tolist() == expected
    assert engine.item_rows(asked[:10]).tolist() == expected[:10]  # the short (dict) path


def test_refusal_before_the_body_is_read_follows_the_queue(engine: RecallEngine) -> None:
    batcher, metrics = make(max_queued_cost=2.0)
    seen: list[object] = []

    async def run() -> list[Any]:
        calls = [
            batcher.recall(engine, [RecallRequest(user_id=str(u), exclude_seen=False)])
            for u in (1, 2, 3)
        ]
        tasks = [asyncio.ensure_future(c) for c in calls]
        await asyncio.sleep(0)  # all three queued (the third refused); the flush comes next
        seen.append(batcher.refusal())
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        seen.append(batcher.refusal())  # drained
        return answers

    answers = asyncio.run(run())
    assert sum(isinstance(a, dict) for a in answers) == 2
    refused, drained = seen
    assert isinstance(refused, ServiceError) and refused.code == "overloaded"
    assert drained is None


def first_refusal(engine: RecallEngine, **settings: Any) -> tuple[int, str]:
    """Three requests arrive each loop pass and two are answered (``max_size=2``), with the
    clock 10 ms on per pass: the queue grows and never empties. The pass of the first 503
    and its message."""
    clock = Clock()
    batcher, _ = make(clock, max_size=2, **settings)
    refused: list[tuple[int, str]] = []

    async def one(at: int, user: int) -> None:
        try:
            await batcher.recall(engine, [RecallRequest(user_id=str(user), k=5)])
        except ServiceError as exc:
            refused.append((at, exc.message))

    async def run() -> None:
        tasks = []
        for at in range(40):
            tasks += [asyncio.create_task(one(at, 1 + (3 * at + i) % 50)) for i in range(3)]
            clock.now += 0.010
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)

    asyncio.run(run())
    assert refused, "the growing queue was never refused"
    return min(refused)


def test_a_standing_queue_is_held_to_the_short_wait(engine: RecallEngine) -> None:
    """A queue that has not emptied for standing_after_ms is overload, not a burst: it is
    refused once its oldest job waited standing_shed_ms, well before shed_after_ms."""
    standing = first_refusal(
        engine, shed_after_ms=50.0, standing_after_ms=100.0, standing_shed_ms=5.0
    )
    bursts_only = first_refusal(engine, shed_after_ms=50.0, standing_after_ms=60_000.0)
    assert "not empty for" in standing[1] and "not empty for" not in bursts_only[1]
    assert 10 <= standing[0] < bursts_only[0]  # not before the queue stood 100 ms
