"""Online ANN recall: the index's answers against exact search, for a sample of real requests.

The build measures the index's recall@k against exact search once, on the build's users. The
vectors served drift from those; this measures it on them. A sampled share of answered recall
requests (``sample``, default 1%) hands its user vector to a bounded queue (``queue``; full:
dropped and counted), off the request path. A background thread takes them in batches, searches
each batch twice, in the index at its served parameters and exactly (``exact_search``: the
index's own flat storage, or all of an IVF's lists), and adds |ANN top-k ∩ exact top-k| / k
to the snapshot's running mean. ``/metrics`` exports it (``recall_ann_recall{snapshot}``) with
its sample count; ``/readyz`` warns when it is more than ``margin`` below the build's.

The thread holds itself to ``cpu_share`` of one core (an exact search over a 1M-item catalogue
costs a hundred recall requests): past it, samples wait in the queue and then drop, so under
load the share measured falls below ``sample``, never the throughput. FAISS releases the GIL
while it searches.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from dataclasses import dataclass

import faiss
import numpy as np

from service.engine import RecallEngine
from service.metrics import Metrics
from service.settings import MonitorSettings

log = logging.getLogger(__name__)
BATCH = 32  # sampled queries searched together (one GEMM for the exact search)


def exact_search(index: faiss.Index, vectors: np.ndarray, k: int) -> np.ndarray:
    """Exact top-``k`` rows of ``index``'s items by inner product: a flat index itself, the
    flat storage of an HNSW or of a refine stage, every list of an IVF-Flat."""
    found = faiss.downcast_index(index)
    if isinstance(found, faiss.IndexRefine):
        found = faiss.downcast_index(found.refine_index)
    if isinstance(found, faiss.IndexHNSW):
        found = faiss.downcast_index(found.storage)
    if isinstance(found, faiss.IndexIVF):
        params = faiss.SearchParametersIVF()
        params.nprobe = found.nlist
        return found.search(vectors, k, params=params)[1]
    return found.search(vectors, k)[1]


@dataclass
class Measured:
    samples: int = 0
    recall_sum: float = 0.0

    @property
    def recall(self) -> float | None:
        return self.recall_sum / self.samples if self.samples else None


class AnnMonitor:
    """Samples answered requests' vectors and measures the index's recall on them."""

    def __init__(self, settings: MonitorSettings, metrics: Metrics):
        self.settings, self.metrics = settings, metrics
        self.k = settings.k
        self._queue: queue.Queue[tuple[RecallEngine, np.ndarray]] = queue.Queue(settings.queue)
        self.measured: dict[str, Measured] = {}
        self._random = random.Random(settings.seed)
        self._busy_s = 0.0
        self._started = time.monotonic()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def offer(self, engine: RecallEngine, vectors: np.ndarray) -> None:
        """Maybe queue some of ``vectors`` (user vectors an answer searched with)."""
        share = self.settings.sample
        if share <= 0:
            return
        for vector in vectors:
            if self._random.random() >= share:
                continue
            try:
                self._queue.put_nowait((engine, vector))
            except queue.Full:
                self.metrics.ann_dropped.inc()

    def start(self) -> None:
        if self.settings.sample > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ann-monitor", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            with contextlib.suppress(queue.Full):  # a full queue wakes it anyway
                self._queue.put_nowait((None, None))  # type: ignore[arg-type]
            self._thread.join(10)

    def join(self) -> None:
        """Until every sample queued so far is measured (or dropped at a stop)."""
        self._queue.join()

    def _run(self) -> None:
        while not self._stopped.is_set():
            batch = [self._queue.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            taken = len(batch)
            batch = [(e, v) for e, v in batch if e is not None]
            if batch:
                self._pace()
                started = time.monotonic()
                try:
                    self.measure(batch)
                except Exception:
                    log.exception("ANN recall measurement failed")
                self._busy_s += time.monotonic() - started
            for _ in range(taken):
                self._queue.task_done()

    def _pace(self) -> None:
        """Wait while this thread has used more than ``cpu_share`` of the time since start."""
        share = self.settings.cpu_share
        while not self._stopped.is_set():
            elapsed = time.monotonic() - self._started
            owed = self._busy_s / share - elapsed
            if owed <= 0:
                return
            self._stopped.wait(min(owed, 1.0))

    def measure(self, batch: list[tuple[RecallEngine, np.ndarray]]) -> None:
        """Recall@k of each sample's index against exact search, added to its snapshot."""
        by_engine: dict[int, tuple[RecallEngine, list[np.ndarray]]] = {}
        for engine, vector in batch:
            by_engine.setdefault(id(engine), (engine, []))[1].append(vector)
        for engine, vectors in by_engine.values():
            k = min(self.k, engine.n_items)
            if k == 0:
                continue
            queries = np.ascontiguousarray(np.stack(vectors), dtype=np.float32)
            found = engine.index.search(queries, k)[1]
            exact = exact_search(engine.index, queries, k)
            hits = [np.isin(f, e).sum() / k for f, e in zip(found, exact, strict=True)]
            measured = self.measured.setdefault(engine.version, Measured())
            measured.samples += len(hits)
            measured.recall_sum += float(sum(hits))
            self.metrics.ann_recall.labels(engine.version).set(measured.recall or 0.0)
            self.metrics.ann_samples.labels(engine.version).inc(len(hits))

    def warning(self, engine: RecallEngine) -> str | None:
        """A readiness warning when the served snapshot's online recall is below its build's
        by more than ``margin`` (over at least ``min_samples``)."""
        measured = self.measured.get(engine.version)
        built = engine.snapshot.manifest.tuning.get("recall")
        if measured is None or measured.samples < self.settings.min_samples or built is None:
            return None
        online = measured.recall or 0.0
        if online >= float(built) - self.settings.margin:
            return None
        return (
            f"online ANN recall@{self.k} {online:.3f} over {measured.samples} sampled requests "
            f"is below the build's {float(built):.3f} by more than {self.settings.margin}"
        )
