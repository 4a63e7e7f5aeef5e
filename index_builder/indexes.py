"""Index choice and building (Flat, HNSW, IVF-Flat, IVF-PQ) and ANN-vs-exact recall.

Every index uses inner product over L2-normalised vectors, so scores are cosines. Search
parameters use faiss ParameterSpace names: ``efSearch`` (HNSW), ``nprobe`` (IVF) and
``k_factor_rf`` (how many candidates per result the refine step re-scores exactly).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)
KINDS = ("auto", "flat", "hnsw", "ivf-flat", "ivf-pq")
FLAT_MAX_ITEMS = 200_000  # exact search stays within a few ms per query up to here
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64  # default; raise it when tuning cannot reach the target
MAX_NLIST = 8192  # k-means cost grows with nlist^2; beyond this training dominates the build
TRAIN_POINTS_PER_LIST = 40  # faiss asks for at least 39 per centroid
ADD_CHUNK = 262_144


@dataclass(frozen=True)
class IndexPlan:
    """What to build: ``kind`` in KINDS (not auto), a faiss factory string, and why."""

    kind: str
    factory: str
    reason: str
    estimated_bytes: int
    nlist: int = 0
    refine: str = ""  # ivf-pq's refine step: "flat" | "sq8" | "sq4"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ivf_nlist(n: int) -> int:
    """Inverted lists: the power of two nearest 4 sqrt(n), capped by training data and cost."""
    nlist = 2 ** round(math.log2(max(4 * math.sqrt(max(n, 1)), 1)))
    while nlist > 1 and (nlist * 39 > n or nlist > MAX_NLIST):
        nlist //= 2
    return nlist


def pq_subquantizers(dim: int) -> int:
    """Two dimensions per 4-bit sub-quantizer (dim / 4 bytes per vector)."""
    return dim // 2 if dim % 2 == 0 else dim


def estimate_bytes(kind: str, n: int, dim: int, nlist: int = 0, refine: str = "") -> int:
    """Approximate RAM of the built index (the vectors, links, codes and ids)."""
    vectors = n * dim * 4
    if kind == "flat":
        return vectors
    if kind == "hnsw":  # level-0 links (2M ints), upper levels, level table
        return vectors + n * (2 * HNSW_M * 4 + 16)
    centroids, ids = nlist * dim * 4, n * 8
    if kind == "ivf-flat":
        return vectors + centroids + ids
    codes = n * (pq_subquantizers(dim) + 1) // 2
    extra = {"flat": vectors, "sq8": n * dim, "sq4": (n * dim + 1) // 2, "": 0}[refine]
    return codes + centroids + ids + extra


REFINES = (("flat", ",RFlat"), ("sq8", ",Refine(SQ8)"), ("sq4", ",Refine(SQ4)"))


class IndexBudgetError(ValueError):
    """Not even the most compressed index fits the memory budget."""


def _ivf_pq_plan(n: int, dim: int, budget: int, reason: str) -> IndexPlan:
    """IVF-PQ fast-scan with the richest refine step that fits (the refine step also serves
    ``reconstruct``, which faiss's fast-scan IVF cannot do by itself)."""
    nlist = ivf_nlist(n)
    m = pq_subquantizers(dim)
    for refine, suffix in REFINES:
        size = estimate_bytes("ivf-pq", n, dim, nlist, refine)
        if size <= budget:
            factory = f"IVF{nlist},PQ{m}x4fsr{suffix}"
            return IndexPlan("ivf-pq", factory, f"{reason}; refine={refine}", size, nlist, refine)
    raise IndexBudgetError(
        f"{n} vectors of dim {dim} need at least {size / 2**30:.2f} GiB as IVF-PQ with a 4-bit "
        f"refine step, over the {budget / 2**30:.2f} GiB budget; raise --memory-budget-gb"
    )


def choose_index(
    n: int, dim: int, requested: str = "auto", budget_bytes: int = 8 << 30
) -> IndexPlan:
    """Pick the index for ``n`` vectors of ``dim`` within ``budget_bytes`` of RAM."""
    if requested not in KINDS:
        raise ValueError(f"unknown index {requested!r}; use one of {KINDS}")
    nlist = ivf_nlist(n)
    sizes = {kind: estimate_bytes(kind, n, dim, nlist) for kind in ("flat", "hnsw", "ivf-flat")}
    gib = f"{budget_bytes / 2**30:.2f} GiB"
    factories = {"flat": "Flat", "hnsw": f"HNSW{HNSW_M}", "ivf-flat": f"IVF{nlist},Flat"}
    if requested == "ivf-pq":
        return _ivf_pq_plan(n, dim, budget_bytes, "requested with --index ivf-pq")
    if requested != "auto":
        plan = IndexPlan(
            requested,
            factories[requested],
            f"requested with --index {requested}",
            sizes[requested],
            nlist if requested == "ivf-flat" else 0,
        )
        if plan.estimated_bytes > budget_bytes:
            log.warning(
                "%s index needs ~%d bytes, over the %s budget", requested, plan.estimated_bytes, gib
            )
        return plan
    if n <= FLAT_MAX_ITEMS and sizes["flat"] <= budget_bytes:
        kind, reason = "flat", f"{n} items <= {FLAT_MAX_ITEMS}: exact search is fast enough"
    elif sizes["ivf-flat"] <= budget_bytes:
        # At k=100 (bench/build_index.py, 1M items) IVF-Flat matched HNSW32's latency and
        # recall with half the memory and a fifth of the build time; HNSW stays on request.
        kind, reason = "ivf-flat", f"{n} items > {FLAT_MAX_ITEMS}; full vectors fit {gib}"
    else:
        return _ivf_pq_plan(
            n, dim, budget_bytes, f"full vectors ({sizes['ivf-flat']} B) exceed {gib}"
        )
    return IndexPlan(kind, factories[kind], reason, sizes[kind], nlist if kind == "ivf-flat" else 0)


def build_index(
    plan: IndexPlan,
    item_vectors: np.ndarray,
    seed: int = 0,
    progress: bool = False,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
) -> faiss.Index:
    """Train (IVF: k-means on a seeded sample) and fill an index with ``item_vectors [n, dim]``.

    ``ef_construction`` (HNSW only): candidates kept while linking each vector. Catalogues with
    many near-duplicate vectors need more (200) for search to reach high recall at any efSearch.
    """
    n, dim = item_vectors.shape
    if plan.kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = ef_construction
        index: faiss.Index = hnsw
    else:
        index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.niter = 10  # enough for stable lists; training time is linear in it
        ivf.cp.seed = seed
    if not index.is_trained:
        size = min(n, TRAIN_POINTS_PER_LIST * max(plan.nlist, 256))
        rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
        log.info("training %s on %d vectors", plan.factory, size)
        index.train(item_vectors[rows])
    for start in tqdm(range(0, n, ADD_CHUNK), desc=f"add {plan.kind}", disable=not progress):
        index.add(item_vectors[start : start + ADD_CHUNK])
    return index


def apply_params(index: faiss.Index, params: dict[str, Any]) -> None:
    """Set search parameters (ParameterSpace names) on ``index``."""
    space = faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, float(value))


def exact_search(item_vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-``k`` item rows by inner product ``[len(queries), k]`` (IndexFlatIP's search)."""
    _, rows = faiss.knn(queries, item_vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    return rows


def recall_at_k(found_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    """Mean over queries of |found top-k ∩ exact top-k| / k, both ``[queries, k]``."""
    if len(exact_rows) == 0:
        return 1.0
    hits = sum(np.isin(f, e).sum() for f, e in zip(found_rows, exact_rows, strict=True))
    return float(hits) / exact_rows.size


def exact_recall(
    index: faiss.Index, item_vectors: np.ndarray, queries: np.ndarray, k: int
) -> float:
    """Recall@k of ``index`` (current parameters) against exact search over ``item_vectors``."""
    k = min(k, len(item_vectors))
    _, found = index.search(queries, k)
    return recall_at_k(found, exact_search(item_vectors, queries, k))
