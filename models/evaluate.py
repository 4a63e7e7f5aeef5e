"""Offline full-ranking evaluation: recall, NDCG, hit rate, MRR at K and catalogue coverage.

Metric definitions follow RecBole: binary gains, log2(rank + 1) discounts, IDCG over
min(|truth|, K) items, recall divided by the number of held-out items.
"""

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import scipy.sparse as sp

KS = (10, 20, 50, 100)
METRICS = ("recall", "ndcg", "hr", "mrr")


class Scorer(Protocol):
    def score(self, users: np.ndarray) -> np.ndarray:
        """Score every item for `users` (int64 user rows [batch]) -> float32 [batch, n_items]."""
        ...


def interaction_matrix(
    user_rows: np.ndarray, item_rows: np.ndarray, n_users: int, n_items: int
) -> sp.csr_matrix:
    """Binary float32 [n_users, n_items] matrix with a 1 at every (user, item) pair given.

    Duplicate pairs collapse to a single 1.
    """
    data = np.ones(len(user_rows), dtype=np.float32)
    matrix = sp.csr_matrix((data, (user_rows, item_rows)), shape=(n_users, n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def evaluate(
    scorer: Scorer,
    truth: sp.csr_matrix,
    exclude: sp.csr_matrix,
    ks: Sequence[int] = KS,
    batch_size: int = 512,
    coverage_k: int = 50,
) -> dict[str, float]:
    """Rank all items for every user with held-out items and average the metrics.

    truth [n_users, n_items]: nonzero at each user's held-out items; users without any are
    skipped. exclude [n_users, n_items]: items removed from the ranking (train, and valid
    for test). Returns `{metric}@{k}` for metric in METRICS and k in ks,
    `coverage@{coverage_k}` (share of the catalogue in any evaluated user's top coverage_k)
    and `users` (how many were evaluated).
    """
    if truth.shape != exclude.shape:
        raise ValueError(
            f"truth {truth.shape} and exclude {exclude.shape} differ in shape; "
            "build both with the same n_users and n_items"
        )
    if not ks or min(ks) < 1 or coverage_k < 1 or batch_size < 1:
        raise ValueError("ks, coverage_k and batch_size must be positive integers")
    truth, exclude = sp.csr_matrix(truth, copy=True), sp.csr_matrix(exclude)
    truth.eliminate_zeros()  # a stored zero is not a held-out item
    n_items = truth.shape[1]
    users = np.flatnonzero(np.diff(truth.indptr) > 0).astype(np.int64)
    if len(users) == 0:
        raise ValueError("truth has no user with a held-out item; check the split")

    k_max = max(ks)
    sums = {f"{metric}@{k}": 0.0 for metric in METRICS for k in ks}
    covered = np.zeros(n_items, dtype=bool)
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        scores = np.array(scorer.score(batch), dtype=np.float32)  # copy: masked in place
        if scores.shape != (len(batch), n_items):
            raise ValueError(
                f"scorer returned scores of shape {scores.shape}, expected {(len(batch), n_items)}"
            )
        excluded = exclude[batch].tocoo()
        scores[excluded.row, excluded.col] = -np.inf
        top_items, top_scores = _top_items(scores, max(k_max, coverage_k))
        covered[top_items[:, :coverage_k][np.isfinite(top_scores[:, :coverage_k])]] = True

        relevant = truth[batch].toarray() != 0
        hits = np.take_along_axis(relevant, top_items[:, :k_max], axis=1)
        hits &= np.isfinite(top_scores[:, :k_max])  # an excluded truth item is never a hit
        for key, values in _user_metrics(hits, relevant.sum(axis=1), ks, k_max).items():
            sums[key] += float(values.sum())

    result = {key: total / len(users) for key, total in sums.items()}
    result[f"coverage@{coverage_k}"] = float(covered.sum()) / n_items
    result["users"] = float(len(users))
    return result


def _top_items(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best `k` items per row, best first: (items int64 [b, k'], scores [b, k']), k' <= k."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        candidates = np.broadcast_to(np.arange(k), scores.shape)
    candidate_scores = np.take_along_axis(scores, candidates, axis=1)
    order = np.argsort(-candidate_scores, axis=1, kind="stable")
    items = np.take_along_axis(candidates, order, axis=1).astype(np.int64)
    return items, np.take_along_axis(candidate_scores, order, axis=1)


def _user_metrics(
    hits: np.ndarray, n_truth: np.ndarray, ks: Sequence[int], k_max: int
) -> dict[str, np.ndarray]:
    """Per-user metrics from hits (bool [b, <=k_max], rank order) and truth counts [b]."""
    padded = np.zeros((hits.shape[0], k_max), dtype=np.float64)
    padded[:, : hits.shape[1]] = hits  # fewer items than K: missing ranks are misses
    discounts = 1.0 / np.log2(np.arange(2, k_max + 2))
    hit_counts = np.cumsum(padded, axis=1)
    dcg = np.cumsum(padded * discounts, axis=1)
    ideal_dcg = np.cumsum(discounts)
    first_rank = np.where(padded.any(axis=1), padded.argmax(axis=1) + 1, k_max + 1)

    metrics: dict[str, np.ndarray] = {}
    for k in ks:
        metrics[f"recall@{k}"] = hit_counts[:, k - 1] / n_truth
        metrics[f"ndcg@{k}"] = dcg[:, k - 1] / ideal_dcg[np.minimum(n_truth, k) - 1]
        metrics[f"hr@{k}"] = (hit_counts[:, k - 1] > 0).astype(np.float64)
        metrics[f"mrr@{k}"] = np.where(first_rank <= k, 1.0 / first_rank, 0.0)
    return metrics
