"""ANN indexes against exact IndexFlatIP search on clustered unit vectors, and index choice."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from index_builder.indexes import (
    IndexBudgetError,
    IndexPlan,
    build_index,
    choose_index,
    exact_recall,
    exact_search,
    ivf_nlist,
    recall_at_k,
)
from index_builder.tuning import measure_latency, tune

N, DIM, K, TARGET = 10_000, 32, 10, 0.95


def unit(rows: np.ndarray) -> np.ndarray:
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    faiss.normalize_L2(rows)
    return rows


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    """(item_vectors [20000, 32], queries [200, 32]): 100 clusters of unit vectors, seeded."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(100, DIM))
    items = unit(centres[rng.integers(0, 100, N)] + 0.35 * rng.normal(size=(N, DIM)))
    queries = unit(centres[rng.integers(0, 100, 200)] + 0.35 * rng.normal(size=(200, DIM)))
    return items, queries


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf-flat", "ivf-pq"])
def test_tuned_index_reaches_target_recall_against_exact_search(
    kind: str, clustered: tuple[np.ndarray, np.ndarray]
) -> None:
    items, queries = clustered
    plan = choose_index(N, DIM, kind)
    index = build_index(plan, items, seed=0)
    tuning = tune(index, plan, items, queries, K, TARGET)
    assert tuning.target_reached
    assert tuning.recall >= TARGET
    # The chosen parameters stay applied: an independent measurement agrees.
    assert exact_recall(index, items, queries, K) == pytest.approx(tuning.recall)
    assert index.ntotal == N and index.metric_type == faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        assert tuning.recall == 1.0 and tuning.params == {}
    else:
        name = "efSearch" if kind == "hnsw" else "nprobe"
        assert name in tuning.params
        # Smallest passing value: the next smaller tried value (if any) missed the target.
        below = [
            t
            for t in tuning.trials
            if t["params"].get(name, 0) < tuning.params[name]
            and t["params"].get("k_factor_rf") == tuning.params.get("k_factor_rf")
        ]
        assert all(t["recall"] < TARGET for t in below)


def test_unreachable_target_reports_the_widest_parameters(
    clustered: tuple[np.ndarray, np.ndarray],
) -> None:
    items, queries = clustered
    nlist = ivf_nlist(N)
    plan = IndexPlan("ivf-pq", f"IVF{nlist},PQ16x4fsr", "no refine step", 0, nlist)
    index = build_index(plan, items, seed=0)
    tuning = tune(index, plan, items, queries, K, 0.999)
    assert not tuning.target_reached
    assert tuning.params == {"nprobe": nlist}
    assert tuning.recall == max(t["recall"] for t in tuning.trials) < 0.999


def test_recall_at_k_counts_the_overlap_of_top_k_sets() -> None:
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, -1], [8, 7, 6, 5]])  # 2 of 4, then 4 of 4, in any order
    assert recall_at_k(found, exact) == pytest.approx((2 + 4) / 8)


def test_exact_search_matches_brute_force_dot_products(
    clustered: tuple[np.ndarray, np.ndarray],
) -> None:
    items, queries = clustered
    rows = exact_search(items, queries[:5], K)
    expected = np.argsort(-(queries[:5] @ items.T), axis=1, kind="stable")[:, :K]
    assert recall_at_k(rows, expected) == 1.0


@pytest.mark.parametrize(
    ("n", "budget_gib", "kind"),
    [
        (1_000, 8.0, "flat"),
        (200_000, 8.0, "flat"),
        (200_001, 8.0, "ivf-flat"),
        (2_000_000, 8.0, "ivf-flat"),
        (10_000_000, 8.0, "ivf-flat"),
        (10_000_000, 1.0, "ivf-pq"),
        (1_000_000, 0.2, "ivf-pq"),
    ],
)
def test_auto_choice_follows_catalogue_size_and_memory_budget(
    n: int, budget_gib: float, kind: str
) -> None:
    plan = choose_index(n, 64, "auto", int(budget_gib * 2**30))
    assert plan.kind == kind
    assert plan.reason
    if kind == "ivf-pq":
        assert plan.estimated_bytes <= budget_gib * 2**30
        assert "x4fs" in plan.factory  # the fast-scan variant


def test_ivf_pq_keeps_the_richest_refine_step_that_fits() -> None:
    refines = [
        choose_index(1_000_000, 64, "ivf-pq", budget << 20).refine for budget in (8192, 200, 70)
    ]
    assert refines == ["flat", "sq8", "sq4"]
    with pytest.raises(IndexBudgetError, match="memory-budget-gb"):
        choose_index(1_000_000, 64, "auto", 30 << 20)


def test_unknown_index_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown index"):
        choose_index(10, 8, "annoy")


def test_nlist_keeps_39_training_points_per_list() -> None:
    for n in (1, 50, 200, 20_000, 1_000_000, 10_000_000):
        nlist = ivf_nlist(n)
        assert nlist >= 1 and (nlist == 1 or nlist * 39 <= n)


def test_latency_is_measured_per_query_on_one_thread(
    clustered: tuple[np.ndarray, np.ndarray],
) -> None:
    items, queries = clustered
    index = build_index(choose_index(N, DIM, "flat"), items)
    threads = faiss.omp_get_max_threads()
    latency = measure_latency(index, queries[:64], K)
    assert faiss.omp_get_max_threads() == threads  # restored
    assert latency["queries"] == 64 and latency["threads"] == 1
    assert 0 < latency["p50"] <= latency["p99"]
