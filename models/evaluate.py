"""Offline full-ranking evaluation: recall, NDCG, hit rate, MRR at K and catalogue coverage.

Metric definitions follow RecBole: binary gains, log2(rank + 1) discounts, IDCG over
min(|truth|, K) items, recall divided by the number of held-out items.
"""

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch

KS = (10, 20, 50, 100)
METRICS = ("recall", "ndcg", "hr", "mrr")


class Scorer(Protocol):
    def score(self, users: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Scores of items ``start..stop-1`` (default: all) for ``users`` (int64 rows) ->
        float32 ``[len(users), stop - start]``."""
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
    batch_size: int = 256,
    coverage_k: int = 50,
    max_users: int = 0,
    seed: int = 0,
    block_cells: int = 1 << 24,
) -> dict[str, float]:
    """Rank all items for every user with held-out items and average the metrics.

    truth [n_users, n_items]: nonzero at each user's held-out items; users without any are
    skipped. exclude [n_users, n_items]: items removed from the ranking (train, and valid
    for test). With ``max_users`` > 0 and more users than that, a seeded sample of
    ``max_users`` of them is evaluated. Items are scored in blocks of about
    ``block_cells / batch`` columns, keeping a running top list, so memory does not grow
    with the catalogue. Returns ``{metric}@{k}`` for metric in METRICS and k in ks,
    ``coverage@{coverage_k}`` (share of the catalogue in any evaluated user's top
    coverage_k), ``users`` (how many were evaluated) and ``users_total`` (how many had truth).
    """
    if truth.shape != exclude.shape:
        raise ValueError(
            f"truth {truth.shape} and exclude {exclude.shape} differ in shape; "
            "build both with the same n_users and n_items"
        )
    if not ks or min(ks) < 1 or coverage_k < 1 or batch_size < 1 or max_users < 0:
        raise ValueError("ks, coverage_k and batch_size must be positive, max_users >= 0")
    truth, exclude = sp.csr_matrix(truth, copy=True), sp.csr_matrix(exclude)
    truth.eliminate_zeros()  # a stored zero is not a held-out item
    n_items = truth.shape[1]
    users, total = evaluated_users(truth, max_users, seed)

    k_max = max(ks)
    sums = {f"{metric}@{k}": 0.0 for metric in METRICS for k in ks}
    covered = np.zeros(n_items, dtype=bool)
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        top_items, top_scores = _ranked(
            scorer, batch, exclude[batch], max(k_max, coverage_k), block_cells
        )
        covered[top_items[:, :coverage_k][np.isfinite(top_scores[:, :coverage_k])]] = True
        hits = _is_truth(truth[batch], top_items[:, :k_max])
        hits &= np.isfinite(top_scores[:, :k_max])  # an excluded truth item is never a hit
        n_truth = np.diff(truth[batch].indptr)
        for key, values in _user_metrics(hits, n_truth, ks, k_max).items():
            sums[key] += float(values.sum())

    result = {key: value / len(users) for key, value in sums.items()}
    result[f"coverage@{coverage_k}"] = float(covered.sum()) / n_items
    result["users"] = float(len(users))
    result["users_total"] = float(total)
    return result


def evaluated_users(
    truth: sp.csr_matrix, max_users: int = 0, seed: int = 0
) -> tuple[np.ndarray, int]:
    """The users ``evaluate`` scores: those with truth items, or a seeded sample of
    ``max_users`` of them when there are more (sorted int64), and how many had truth."""
    truth = sp.csr_matrix(truth)
    users = np.flatnonzero(np.diff(truth.indptr) > 0).astype(np.int64)
    if len(users) == 0:
        raise ValueError("truth has no user with a held-out item; check the split")
    total = len(users)
    if max_users and total > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    return users, total


def _ranked(
    scorer: Scorer, users: np.ndarray, excluded: sp.csr_matrix, k: int, block_cells: int
) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` items per user, best first, over item blocks: (int64 [b, k'], float32 [b, k'])."""
    n_items = excluded.shape[1]
    k = min(k, n_items)
    coo = excluded.tocoo()
    by_item = np.argsort(coo.col, kind="stable")
    cols, rows = coo.col[by_item], coo.row[by_item]
    width = max(k, block_cells // max(len(users), 1))
    best_scores = torch.empty(len(users), 0)
    best_items = torch.empty(len(users), 0, dtype=torch.int64)
    for a in range(0, n_items, width):
        b = min(a + width, n_items)
        scores = np.array(scorer.score(users, a, b), dtype=np.float32)  # copy: masked in place
        if scores.shape != (len(users), b - a):
            raise ValueError(
                f"scorer returned scores of shape {scores.shape}, expected {(len(users), b - a)}"
            )
        lo, hi = np.searchsorted(cols, [a, b])
        scores[rows[lo:hi], cols[lo:hi] - a] = -np.inf
        block = torch.from_numpy(scores)
        values, items = torch.topk(block, min(k, b - a), dim=1)
        best_scores = torch.cat([best_scores, values], dim=1)
        best_items = torch.cat([best_items, items + a], dim=1)
        if best_scores.shape[1] > k:
            best_scores, keep = torch.topk(best_scores, k, dim=1)
            best_items = best_items.gather(1, keep)
    return best_items.numpy(), best_scores.numpy()


def _is_truth(truth: sp.csr_matrix, items: np.ndarray) -> np.ndarray:
    """bool ``[b, k]``: whether each ranked item is one of its user's truth items."""
    n_items = truth.shape[1]
    keys = np.repeat(np.arange(truth.shape[0]), np.diff(truth.indptr)) * n_items + truth.indices
    keys.sort()
    asked = np.arange(len(items))[:, None] * n_items + items
    where = np.searchsorted(keys, asked).clip(max=max(len(keys) - 1, 0))
    return keys[where] == asked if len(keys) else np.zeros(items.shape, dtype=bool)


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
