"""RecallBatcher: answers the requests of one event-loop pass together, on the loop itself.

A handler submits a job and awaits its future. The first job of a pass schedules a flush for
the next pass (``loop.call_soon``; ``max_wait_ms`` > 0 waits that long instead), so every
request the loop parsed meanwhile joins it. A flush answers up to ``max_size`` requests with
one cache read, one user-tower forward for the misses and one index search, then resolves
their futures. Under light load a batch is one request and nothing waits; under heavy load
the loop spends longer per flush, more requests arrive meanwhile, and batches grow.

Why on the loop and not on worker threads: measured on two cores, the GIL hand-offs between
a busy event loop and a busy worker (every torch op and FAISS call returns to Python) cost
more than the work; one thread doing both wastes nothing (README "Performance"). A request
that fails validation against the snapshot fails alone; the others of its batch are answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.engine import RecallEngine
from service.errors import ServiceError
from service.metrics import Metrics
from service.recaller import Prepared, Recaller
from service.schemas import RecallRequest
from service.settings import BatchSettings

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Job:
    engine: RecallEngine
    future: asyncio.Future[Any]
    started: float
    requests: list[RecallRequest] = field(default_factory=list)  # a recall job
    batch: bool = False  # answer a list (POST /v1/recall/batch) rather than one body
    similar: tuple[str, int] | None = None  # a similar-items job: (item_id, k)

    @property
    def size(self) -> int:
        return max(len(self.requests), 1)


_Outcome = tuple[_Job, Any, BaseException | None]


class RecallBatcher:
    """Per-app: collects jobs during an event-loop pass and answers them in the next one."""

    def __init__(self, recaller: Recaller, settings: BatchSettings, metrics: Metrics):
        self.recaller, self.settings, self.metrics = recaller, settings, metrics
        self._pending: deque[_Job] = deque()
        self._scheduled = False

    async def recall(
        self, engine: RecallEngine, requests: list[RecallRequest], batch: bool = False
    ) -> Any:
        """One response body (``batch``: a list of them, one per request)."""
        return await self._submit(engine, requests=requests, batch=batch)

    async def similar(self, engine: RecallEngine, item_id: str, k: int) -> dict[str, Any]:
        """The similar-items response body for ``item_id``."""
        result: dict[str, Any] = await self._submit(engine, similar=(item_id, k))
        return result

    async def _submit(self, engine: RecallEngine, **what: Any) -> Any:
        loop = asyncio.get_running_loop()
        job = _Job(engine, loop.create_future(), time.perf_counter(), **what)
        self._pending.append(job)
        if not self._scheduled:
            self._scheduled = True
            wait = self.settings.max_wait_ms / 1000
            if wait > 0:
                loop.call_later(wait, self._flush)
            else:
                loop.call_soon(self._flush)
        return await job.future

    def _flush(self) -> None:
        jobs, size = [], 0
        while self._pending and size < self.settings.max_size:
            job = self._pending.popleft()
            if job.future.done():  # cancelled: the client went away
                continue
            jobs.append(job)
            size += job.size
        if self._pending:  # the rest in the next pass, after the loop has done its I/O
            asyncio.get_running_loop().call_soon(self._flush)
        else:
            self._scheduled = False
        if not jobs:
            return
        try:
            outcomes = self._answer(jobs)
        except Exception as exc:  # a bug or a library error: every job of the batch fails
            outcomes = [(job, None, exc) for job in jobs]
        self.metrics.batch_size.observe(size)
        for job, result, error in outcomes:
            if job.future.done():
                continue
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)

    def _answer(self, jobs: list[_Job]) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        engines = {id(job.engine): job.engine for job in jobs}  # a reload may split a batch
        for key, engine in engines.items():
            mine = [job for job in jobs if id(job.engine) == key]
            outcomes += self._recall(engine, [job for job in mine if job.similar is None])
            outcomes += self._similar(engine, [job for job in mine if job.similar is not None])
        return outcomes

    def _recall(self, engine: RecallEngine, jobs: list[_Job]) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        ready: list[tuple[_Job, list[Prepared]]] = []
        for job in jobs:
            try:
                prepared = self.recaller.prepare_all(engine, job.requests, job.started, job.batch)
            except ServiceError as exc:
                outcomes.append((job, None, exc))
                continue
            ready.append((job, prepared))
        if not ready:
            return outcomes
        bodies = iter(self.recaller.answer(engine, [p for _, batch in ready for p in batch]))
        for job, prepared in ready:
            answered = [next(bodies) for _ in prepared]
            outcomes.append((job, answered if job.batch else answered[0], None))
        return outcomes

    def _similar(self, engine: RecallEngine, jobs: list[_Job]) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        rows, ready = [], []
        for job in jobs:
            assert job.similar is not None
            try:
                rows.append(engine.item_row(job.similar[0]))
            except ServiceError as exc:
                outcomes.append((job, None, exc))
                continue
            ready.append((job, job.similar))
        if not ready:
            return outcomes
        found = engine.similar_rows(np.array(rows, dtype=np.int64), [k for _, (_, k) in ready])
        now = time.perf_counter()
        for (job, (item_id, _)), candidates in zip(ready, found, strict=True):
            body = {
                "snapshot": engine.version,
                "item_id": item_id,
                "items": engine.items(candidates),
                "took_ms": round((now - job.started) * 1000, 3),
            }
            outcomes.append((job, body, None))
        return outcomes
