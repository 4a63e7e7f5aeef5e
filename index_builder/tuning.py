"""Search-parameter tuning against exact search, and single-thread latency measurement."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import faiss
import numpy as np

from index_builder.indexes import IndexPlan, apply_params, exact_search, recall_at_k

log = logging.getLogger(__name__)
EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024, 1536, 2048)
NPROBE = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
K_FACTOR = (1, 2, 4, 8, 16)


@dataclass
class Tuning:
    """Chosen parameters, their measured recall@k, and every trial (params, recall, seconds)."""

    params: dict[str, int]
    recall: float
    target_reached: bool
    k: int
    target_recall: float
    queries: int
    trials: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _smallest_passing(grid: list[int], passes: Callable[[int], bool]) -> int | None:
    """Binary search for the first grid value that passes (recall grows with the value)."""
    lo, hi, best = 0, len(grid) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if passes(grid[mid]):
            best, hi = grid[mid], mid - 1
        else:
            lo = mid + 1
    return best


def _grids(plan: IndexPlan, k: int) -> tuple[str, list[int], list[int]]:
    if plan.kind == "hnsw":  # faiss searches with max(efSearch, k)
        return "efSearch", [k] + [v for v in EF_SEARCH if v > k], [1]
    if plan.kind in ("ivf-flat", "ivf-pq"):
        nprobe = [v for v in NPROBE if v < plan.nlist] + [plan.nlist]
        return "nprobe", nprobe, list(K_FACTOR) if plan.refine else [1]
    return "", [], [1]


def tune(
    index: faiss.Index,
    plan: IndexPlan,
    item_vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    target: float,
) -> Tuning:
    """Smallest efSearch / nprobe (per refine k_factor, the fastest pair) reaching ``target``
    recall@k against exact search; falls back to the largest values if none does.

    ``item_vectors [n, dim]``, ``queries [q, dim]``; leaves the chosen parameters applied.
    """
    k = min(k, len(item_vectors))
    exact_rows = exact_search(item_vectors, queries, k)
    trials: list[dict[str, Any]] = []

    def measure(params: dict[str, int]) -> float:
        apply_params(index, params)
        start = time.perf_counter()
        _, found = index.search(queries, k)
        seconds = time.perf_counter() - start
        recall = recall_at_k(found, exact_rows)
        trials.append({"params": dict(params), "recall": recall, "seconds": seconds})
        log.info("tuning %s: recall@%d %.4f (%.3fs)", params, k, recall, seconds)
        return recall

    name, grid, k_factors = _grids(plan, k)
    if not name:
        recall = measure({})
        return Tuning({}, recall, recall >= target, k, target, len(queries), trials)
    passing = []
    for k_factor in k_factors:
        extra = {"k_factor_rf": k_factor} if plan.refine else {}

        def passes(value: int, extra: dict[str, int] = extra) -> bool:
            return measure({name: value, **extra}) >= target

        value = _smallest_passing(grid, passes)
        if value is not None:
            passing.append({name: value, **extra})
    if passing:
        chosen = [t for t in trials if t["params"] in passing and t["recall"] >= target]
        best = min(chosen, key=lambda t: t["seconds"])
    else:
        widest = {name: grid[-1], **({"k_factor_rf": k_factors[-1]} if plan.refine else {})}
        if not any(t["params"] == widest for t in trials):
            measure(widest)
        best = next(t for t in trials if t["params"] == widest)
        log.warning(
            "recall@%d target %.3f not reached; best %.4f with %s",
            k,
            target,
            best["recall"],
            widest,
        )
    apply_params(index, best["params"])
    return Tuning(best["params"], best["recall"], bool(passing), k, target, len(queries), trials)


def measure_latency(
    index: faiss.Index, queries: np.ndarray, k: int, max_seconds: float = 20.0
) -> dict[str, float]:
    """Per-query search time on one thread, in ms: single-query p50 / p99 and batch-of-64 mean.

    Stops early (after at least 50 queries) when ``max_seconds`` has been spent on a part.
    """
    k = min(k, index.ntotal)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.search(queries[:8], k)  # warm caches
        single: list[float] = []
        budget_end = time.perf_counter() + max_seconds
        for row in range(len(queries)):
            start = time.perf_counter()
            index.search(queries[row : row + 1], k)
            single.append(time.perf_counter() - start)
            if row >= 49 and time.perf_counter() > budget_end:
                break
        batch_total, batch_queries = 0.0, 0
        budget_end = time.perf_counter() + max_seconds
        for start_row in range(0, len(queries), 64):
            batch = queries[start_row : start_row + 64]
            start = time.perf_counter()
            index.search(batch, k)
            batch_total += time.perf_counter() - start
            batch_queries += len(batch)
            if batch_queries >= 64 and time.perf_counter() > budget_end:
                break
    finally:
        faiss.omp_set_num_threads(threads)
    times = np.array(single) * 1000
    return {
        "p50": float(np.percentile(times, 50)),
        "p99": float(np.percentile(times, 99)),
        "batch64_per_query": 1000 * batch_total / max(batch_queries, 1),
        "queries": len(single),
        "k": k,
        "threads": 1,
    }
