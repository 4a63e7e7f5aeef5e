"""RecallBatcher: admits checked requests by cost and answers them together, on the loop itself.

A handler hands the batcher a request; ``recall`` and ``similar`` check it against the
snapshot first (``Recaller.prepare_all``, ``RecallEngine.item_row``), so a request that names
an unknown feature, filter or item is answered 4xx before it is queued and never reaches a
batch. Then admission: every queued request has a cost (``cost``: one unit is a k=100 request
with nothing excluded; k and exclusions add to it), and a request is refused with 503
``overloaded`` and ``Retry-After`` when the cost queued ahead of it would pass
``max_queued_cost`` (its wait), all queued cost would pass ``max_pending_cost``, or the
oldest queued job has waited ``shed_after_ms``. A queue that has not been empty for
``standing_after_ms`` (the rest of a big job answered in parts aside) is standing: the load is
past what the loop answers, not a burst, and the bounds tighten to ``standing_shed_ms`` of
wait and one pass (``max_flush_cost``) ahead, so what is admitted is answered in a few
milliseconds and the rest refused at once (the controlled delay of Maurer, "Fail at scale",
ACM Queue 2015: a long bound absorbs bursts, a short one keeps a standing queue short).
Overload then costs the loop a parse and a short answer per request instead of an ever
longer queue. An idle batcher admits any job.

The first job of a pass schedules a flush for the next pass (``loop.call_soon``;
``max_wait_ms`` > 0 waits that long instead), so every request the loop parsed meanwhile
joins it. A flush answers up to ``max_size`` requests and ``max_flush_cost`` units with one
cache read, one user-tower forward for the misses and one index search per fetch size, then
resolves the futures of the jobs it finished. A job bigger than what is left of a flush (a
batch of heavy requests) is answered in parts, one per pass, and goes to the back of the
queue between parts, so the requests of other callers are answered in between; a batch's
bodies are rendered to JSON as their part is answered, so its answer is joined, not rendered
in one stall of the loop.

Why on the loop and not on worker threads: measured on two cores, the GIL hand-offs between
a busy event loop and a busy worker (every torch op and FAISS call returns to Python) cost
more than the work; one thread doing both wastes nothing (README "Performance"). An error
while answering a flush is retried job by job, so it fails only the job that caused it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from service.engine import RecallEngine
from service.errors import Code, ServiceError
from service.metrics import Metrics
from service.recaller import Prepared, Recaller
from service.schemas import RecallRequest
from service.settings import BatchSettings
from service.watch import Watch

log = logging.getLogger(__name__)
PREPARE_IDS = 2048  # ids (exclusions, history) of a batch checked between yields to the loop
UNIT_ITEMS = 200  # items fetched and answered that cost one unit (a k=100 request: 0.5 + 0.5)


def cost(k: int, excluded: int) -> float:
    """Admission cost of one request: ``(UNIT_ITEMS / 2 + k + excluded) / UNIT_ITEMS``.

    The fixed half stands for the tower forward, the cache and the HTTP work; ``k`` and the
    excluded items for the over-fetch, the filtering and the answer's items. A k=100 request
    costs 1; k=1000 with 1,000 exclusions costs 10.5.
    """
    return (UNIT_ITEMS / 2 + k + excluded) / UNIT_ITEMS


@dataclass(eq=False)
class _Job:
    engine: RecallEngine
    future: asyncio.Future[Any]
    started: float
    prepared: list[Prepared] = field(default_factory=list)  # a recall job
    batch: bool = False  # answer a list (POST /v1/recall/batch) rather than one body
    similar: tuple[str, int, int] | None = None  # a similar-items job: (item_id, row, k)
    costs: list[float] = field(default_factory=list)  # per request
    answered: list[Any] = field(default_factory=list)  # bodies of the parts done so far
    taken: int = 0  # requests handed to a flush so far
    waiting: float = 0.0  # perf_counter since it was queued or last got a part

    @property
    def queued_cost(self) -> float:
        return sum(self.costs[self.taken :])

    def ahead(self, flush_cost: float) -> float:
        """Cost this job puts ahead of a request queued behind it: all of it, or one part."""
        return min(self.queued_cost, flush_cost)


class RecallBatcher:
    """Per-app: admits jobs, collects them during an event-loop pass, answers them in the next."""

    def __init__(
        self,
        recaller: Recaller,
        settings: BatchSettings,
        metrics: Metrics,
        clock: Callable[[], float] = time.perf_counter,
        watch: Watch | None = None,
    ):
        self.recaller, self.settings, self.metrics = recaller, settings, metrics
        self.watch = watch  # every answered recall request is recorded for it
        self.clock = clock
        self._pending: deque[_Job] = deque()
        self._pending_cost = 0.0  # all queued cost
        self._ahead = 0.0  # cost a request queued now would wait for (Job.ahead summed)
        self._empty_at = clock()  # when the queue was last seen empty
        self._scheduled = False

    @property
    def pending_cost(self) -> float:
        """Cost units admitted and not yet answered."""
        return self._pending_cost

    async def recall(
        self, engine: RecallEngine, requests: Sequence[RecallRequest], batch: bool = False
    ) -> Any:
        """One response body (``batch``: a list of them, one per request, each already
        rendered as JSON bytes, as its part was answered). Raises ServiceError for a request
        the snapshot cannot answer, or ``overloaded``."""
        started = self.clock()
        prepared: list[Prepared] = []
        at, ids = 0, 0
        for end, request in enumerate(requests, start=1):  # a big batch lets the loop breathe
            ids += len(request.exclude_item_ids or ()) + len(request.history or ()) + 1
            if ids >= PREPARE_IDS or end == len(requests):
                chunk = requests[at:end]
                prepared += self.recaller.prepare_all(engine, chunk, started, batch, offset=at)
                at, ids = end, 0
                if end < len(requests):
                    await asyncio.sleep(0)
        costs = [cost(p.request.k, len(p.excluded)) for p in prepared]
        return await self._submit(
            _Job(engine, self._future(), started, prepared=prepared, batch=batch, costs=costs)
        )

    async def similar(self, engine: RecallEngine, item_id: str, k: int) -> dict[str, Any]:
        """The similar-items response body for ``item_id`` (ServiceError ``not_found``)."""
        started = self.clock()
        row = engine.item_row(item_id)
        job = _Job(engine, self._future(), started, similar=(item_id, row, k), costs=[cost(k, 1)])
        result: dict[str, Any] = await self._submit(job)
        return result

    @staticmethod
    def _future() -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, job: _Job) -> Any:
        self._admit(job)
        job.waiting = job.started
        self._enqueue(job)
        if not self._scheduled:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            wait = self.settings.max_wait_ms / 1000
            if wait > 0:
                loop.call_later(wait, self._flush)
            else:
                loop.call_soon(self._flush)
        return await job.future

    def refusal(self, now: float | None = None) -> ServiceError | None:
        """``overloaded`` when a one-unit request would not fit the queue, else None: the check the
        fast paths make before reading and parsing a body, so overload is refused for the cost
        of an HTTP head (``_admit`` checks each job's own cost after)."""
        return self._overloaded(1.0, 1.0, self.clock() if now is None else now, 1)  # one unit

    def _admit(self, job: _Job) -> None:
        """Refuse ``job`` with 503 when the queue is past its cost or its age bound."""
        ahead = job.ahead(self.settings.max_flush_cost)
        refused = self._overloaded(ahead, job.queued_cost, job.started, len(job.costs))
        if refused is not None:
            raise refused

    def _overloaded(
        self, ahead: float, cost: float, now: float, requests: int
    ) -> ServiceError | None:
        if not self._pending:
            return None  # an idle batcher takes any job the limits let through
        settings = self.settings
        waited_ms = (now - self._pending[0].waiting) * 1000
        max_ahead, max_wait = settings.max_queued_cost, settings.shed_after_ms
        standing = (now - self._empty_at) * 1000 > settings.standing_after_ms
        if standing:
            max_ahead = min(max_ahead, settings.max_flush_cost)
            max_wait = min(max_wait, settings.standing_shed_ms)
        if self._ahead + ahead > max_ahead:
            reason = f"{self._ahead:.0f} cost units are queued ahead"
        elif self._pending_cost + cost > settings.max_pending_cost:
            reason = f"{self._pending_cost:.0f} cost units are queued"
        elif waited_ms > max_wait:
            reason = f"the oldest queued request has waited {waited_ms:.0f} ms"
        else:
            return None
        if standing:
            reason += f", in a queue not empty for {(now - self._empty_at) * 1000:.0f} ms"
        self.metrics.shed.inc(requests)
        return ServiceError(
            Code.OVERLOADED,
            f"the service is over capacity ({reason}); retry after the Retry-After seconds",
            headers={"Retry-After": str(settings.retry_after_s)},
        )

    def _enqueue(self, job: _Job) -> None:
        if not self._pending:
            self._empty_at = job.waiting  # empty until this job came
        self._pending.append(job)
        self._pending_cost += job.queued_cost
        self._ahead += job.ahead(self.settings.max_flush_cost)

    def _forget(self, job: _Job) -> None:
        """Take a job that left the queue out of the queued costs."""
        if not self._pending:
            self._pending_cost = self._ahead = 0.0  # no float drift across an idle moment
            return
        self._pending_cost -= job.queued_cost
        self._ahead -= job.ahead(self.settings.max_flush_cost)

    def _flush(self) -> None:
        parts: list[tuple[_Job, int]] = []  # (job, requests of it answered in this flush)
        size, budget = 0, self.settings.max_flush_cost
        while self._pending and size < self.settings.max_size and budget > 0:
            job = self._pending.popleft()
            self._forget(job)
            if job.future.done():  # cancelled: the client went away
                continue
            take, spent = 0, 0.0
            first = job.taken
            while first + take < len(job.costs) and size + take < self.settings.max_size:
                if take and spent + job.costs[first + take] > budget:
                    break
                spent += job.costs[first + take]
                take += 1
            parts.append((job, take))
            job.taken += take
            size, budget = size + take, budget - spent
            if job.taken < len(job.costs):  # the rest of a big job after the others
                job.waiting = self.clock()
                self._enqueue(job)
                break
        if self._pending:  # the rest in the next pass, after the loop has done its I/O
            asyncio.get_running_loop().call_soon(self._flush)
            if not any(job.taken == 0 for job in self._pending):
                self._empty_at = self.clock()  # only the parts of big jobs: known work
        else:
            self._scheduled = False
            self._empty_at = self.clock()
        if not parts:
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("flush of %d requests (%d jobs), %.1f cost units left", size, len(parts),
                      self._pending_cost)  # fmt: skip
        try:
            outcomes = self._answer(parts)
        except Exception:  # one job's request broke the batch: answer them one by one
            log.exception("a batch of %d jobs failed; answering them one at a time", len(parts))
            outcomes = []
            for part in parts:
                try:
                    outcomes += self._answer([part])
                except Exception as exc:
                    outcomes.append((part[0], [], exc))
        self.metrics.batch_size.observe(size)
        watch, now = self.watch, self.clock()
        for job, bodies, error in outcomes:
            if watch is not None and job.similar is None:
                latency = now - job.started
                if error is not None and not isinstance(error, ServiceError):
                    watch.record(job.engine.version, latency, True, False)
                for body in bodies:
                    empty = not body["items"] or body["user"]["source"] == "fallback"
                    watch.record(job.engine.version, latency, False, empty)
            if job.future.done():
                continue
            if error is not None:
                if not isinstance(error, ServiceError):
                    log.error("request failed: %r", error, exc_info=error)
                    error = ServiceError(Code.INTERNAL, "internal error; see the service log")
                if job in self._pending:  # a part failed: the rest is not answered
                    self._pending.remove(job)
                    self._forget(job)
                job.future.set_exception(error)
                continue
            if job.batch:  # rendered part by part: a big batch never renders in one stall
                bodies = [orjson.dumps(b, option=orjson.OPT_SERIALIZE_NUMPY) for b in bodies]
            job.answered += bodies
            if len(job.answered) == len(job.costs):
                done = job.answered if job.batch else job.answered[0]
                job.future.set_result(done)

    def _answer(
        self, parts: list[tuple[_Job, int]]
    ) -> list[tuple[_Job, list[Any], BaseException | None]]:
        """Bodies for each part, grouped by engine (a reload may split a flush)."""
        outcomes: list[tuple[_Job, list[Any], BaseException | None]] = []
        engines = {id(job.engine): job.engine for job, _ in parts}
        for key, engine in engines.items():
            mine = [(job, n) for job, n in parts if id(job.engine) == key]
            recall = [(job, n) for job, n in mine if job.similar is None]
            if recall:
                chosen = [p for job, n in recall for p in job.prepared[job.taken - n : job.taken]]
                bodies = iter(self.recaller.answer(engine, chosen))
                outcomes += [(job, [next(bodies) for _ in range(n)], None) for job, n in recall]
            similar = [job for job, _ in mine if job.similar is not None]
            if similar:
                outcomes += self._similar(engine, similar)
        return outcomes

    def _similar(
        self, engine: RecallEngine, jobs: list[_Job]
    ) -> list[tuple[_Job, list[Any], BaseException | None]]:
        asked = [job.similar for job in jobs if job.similar is not None]
        rows = np.array([row for _, row, _ in asked], dtype=np.int64)
        found = engine.similar_rows(rows, [k for _, _, k in asked])
        now = self.clock()
        outcomes: list[tuple[_Job, list[Any], BaseException | None]] = []
        for job, (item_id, _, _), candidates in zip(jobs, asked, found, strict=True):
            body = {
                "snapshot": engine.version,
                "item_id": item_id,
                "items": engine.items(candidates),
                "took_ms": round((now - job.started) * 1000, 3),
            }
            outcomes.append((job, [body], None))
        return outcomes
