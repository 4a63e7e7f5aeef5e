import math

import numpy as np
import pytest
import scipy.sparse as sp

from models.evaluate import evaluate, interaction_matrix

# Hand-built example, 3 users x 6 items.
# user 0: scores rank items 0,1,2,3,4,5; truth {0, 2} -> hits at ranks 1 and 3; nothing excluded.
# user 1: item 0 has the top score but is excluded, so the ranking is 5,4,3,2,1;
#         truth {3} -> hit at rank 3 (rank 4 if the exclusion were ignored).
# user 2: no truth, so it is skipped; its top-2 {2, 3} would change coverage if it counted.
SCORES = np.array(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        [0.95, 0.1, 0.2, 0.3, 0.4, 0.5],
        [0.0, 0.1, 0.9, 0.8, 0.2, 0.3],
    ],
    dtype=np.float32,
)
TRUTH = interaction_matrix(np.array([0, 0, 1]), np.array([0, 2, 3]), 3, 6)
EXCLUDE = interaction_matrix(np.array([1, 2]), np.array([0, 1]), 3, 6)
KS_SMALL = (1, 2, 3, 5)
LOG2_3 = math.log2(3)


class FixedScorer:
    """Fake of the Scorer protocol returning rows of a fixed score matrix."""

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores
        self.calls: list[np.ndarray] = []

    def score(self, users: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
        self.calls.append(users)
        return self.scores[users, start:stop]


def run(scores: np.ndarray = SCORES, batch_size: int = 512) -> dict[str, float]:
    scorer = FixedScorer(scores)
    return evaluate(scorer, TRUTH, EXCLUDE, ks=KS_SMALL, batch_size=batch_size, coverage_k=2)


def test_metrics_match_hand_derived_values() -> None:
    result = run()
    expected = {
        # K=1: user 0 hits item 0 (recall 1/2, ndcg 1/1, mrr 1); user 1 misses everything.
        "recall@1": (0.5 + 0.0) / 2,
        "ndcg@1": (1.0 + 0.0) / 2,
        "hr@1": (1.0 + 0.0) / 2,
        "mrr@1": (1.0 + 0.0) / 2,
        # K=2: user 0 still one hit at rank 1; IDCG over min(2, 2) items = 1 + 1/log2(3).
        "recall@2": (0.5 + 0.0) / 2,
        "ndcg@2": (1.0 / (1.0 + 1.0 / LOG2_3) + 0.0) / 2,
        "hr@2": (1.0 + 0.0) / 2,
        "mrr@2": (1.0 + 0.0) / 2,
        # K=3: user 0 hits at ranks 1 and 3 -> DCG 1 + 1/log2(4), IDCG 1 + 1/log2(3);
        #      user 1 hits at rank 3 -> DCG 1/log2(4), IDCG 1 (one truth item), mrr 1/3.
        "recall@3": (1.0 + 1.0) / 2,
        "ndcg@3": ((1.0 + 1.0 / 2.0) / (1.0 + 1.0 / LOG2_3) + 1.0 / 2.0) / 2,
        "hr@3": (1.0 + 1.0) / 2,
        "mrr@3": (1.0 + 1.0 / 3.0) / 2,
        # K=5: no further hits, same as K=3.
        "recall@5": 1.0,
        "ndcg@5": ((1.0 + 1.0 / 2.0) / (1.0 + 1.0 / LOG2_3) + 1.0 / 2.0) / 2,
        "hr@5": 1.0,
        "mrr@5": (1.0 + 1.0 / 3.0) / 2,
        # Top-2 of evaluated users: user 0 {0, 1}, user 1 {5, 4} -> 4 of 6 items.
        "coverage@2": 4 / 6,
        "users": 2.0,
        "users_total": 2.0,
    }
    assert result.keys() == expected.keys()
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-9), key


def test_excluded_top_scored_item_does_not_take_a_rank() -> None:
    with_exclusion = run()
    without_exclusion = evaluate(
        FixedScorer(SCORES), TRUTH, sp.csr_matrix(TRUTH.shape, dtype=np.float32), ks=(5,)
    )
    # User 1's truth item sits at rank 3 with item 0 excluded, at rank 4 without.
    assert with_exclusion["mrr@5"] == pytest.approx((1.0 + 1.0 / 3.0) / 2)
    assert without_exclusion["mrr@5"] == pytest.approx((1.0 + 1.0 / 4.0) / 2)


def test_users_without_truth_are_never_scored() -> None:
    scorer = FixedScorer(SCORES)
    evaluate(scorer, TRUTH, EXCLUDE, ks=KS_SMALL, batch_size=1)
    assert [users.tolist() for users in scorer.calls] == [[0], [1]]  # one block each


def test_batch_size_does_not_change_results() -> None:
    assert run(batch_size=1) == pytest.approx(run(batch_size=512))


def test_scorer_output_is_not_modified() -> None:
    scores = SCORES.copy()
    run(scores)
    np.testing.assert_array_equal(scores, SCORES)


def test_item_in_truth_and_exclude_is_never_a_hit() -> None:
    # One user, truth {0}, items 0..4 excluded: only item 5 is rankable, and K=5 and K=10
    # reach into the -inf tail (K=10 exceeds the catalogue) without counting item 0.
    truth = interaction_matrix(np.array([0]), np.array([0]), 1, 6)
    exclude = interaction_matrix(np.zeros(5, dtype=np.int64), np.arange(5), 1, 6)
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]], dtype=np.float32)
    result = evaluate(FixedScorer(scores), truth, exclude, ks=(5, 10), coverage_k=10)
    assert result["recall@10"] == 0.0
    assert result["hr@5"] == 0.0
    assert result["coverage@10"] == pytest.approx(1 / 6)  # excluded items are not covered


def test_no_user_with_truth_raises() -> None:
    empty = sp.csr_matrix((3, 6), dtype=np.float32)
    with pytest.raises(ValueError, match="no user with a held-out item"):
        evaluate(FixedScorer(SCORES), empty, EXCLUDE)


def test_interaction_matrix_collapses_duplicates_to_one() -> None:
    matrix = interaction_matrix(np.array([0, 0, 2, 2, 2]), np.array([1, 1, 0, 3, 3]), 3, 4)
    assert matrix.dtype == np.float32
    assert matrix.shape == (3, 4)
    np.testing.assert_array_equal(matrix.toarray(), [[0, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 1]])


def test_metrics_match_per_user_reference_on_random_data() -> None:
    rng = np.random.default_rng(7)
    train = sp.csr_matrix((rng.random((60, 30)) < 0.2).astype(np.float32))
    held_out = (rng.random((60, 30)) < 0.1) & (train.toarray() == 0)
    scores = rng.random((60, 30)).astype(np.float32)
    result = evaluate(FixedScorer(scores), sp.csr_matrix(held_out), train, ks=(3, 10), batch_size=7)
    recalls, ndcgs = [], []
    for user in np.flatnonzero(held_out.any(axis=1)):
        ranking = [i for i in np.argsort(-scores[user]) if train[user, i] == 0][:10]
        hits = held_out[user, ranking]
        recalls.append(hits.sum() / held_out[user].sum())
        ideal = min(held_out[user].sum(), 10)
        discounts = 1 / np.log2(np.arange(2, 12))
        ndcgs.append((hits * discounts[: len(hits)]).sum() / discounts[:ideal].sum())
    assert result["users"] == len(recalls)
    assert result["recall@10"] == pytest.approx(np.mean(recalls))
    assert result["ndcg@10"] == pytest.approx(np.mean(ndcgs))


def random_world(seed: int = 7, users: int = 60, items: int = 30) -> tuple:
    rng = np.random.default_rng(seed)
    train = sp.csr_matrix((rng.random((users, items)) < 0.2).astype(np.float32))
    held_out = sp.csr_matrix((rng.random((users, items)) < 0.1) & (train.toarray() == 0))
    return FixedScorer(rng.random((users, items)).astype(np.float32)), held_out, train


def test_item_blocks_do_not_change_results() -> None:
    scorer, held_out, train = random_world()
    knobs = {"ks": (3, 10), "batch_size": 7, "coverage_k": 5}
    whole = evaluate(scorer, held_out, train, **knobs)
    scorer.calls.clear()
    # 7 users x about 2 cells each: blocks of 10 items (never narrower than the top list).
    blocked = evaluate(scorer, held_out, train, block_cells=16, **knobs)
    assert len(scorer.calls) > len(range(0, int(whole["users"]), 7))  # several blocks a batch
    assert blocked == pytest.approx(whole)


def test_a_user_sample_scores_exactly_the_sampled_users() -> None:
    scorer, held_out, train = random_world(users=300)
    sampled = evaluate(scorer, held_out, train, ks=(10,), max_users=50, seed=3)
    assert (sampled["users"], sampled["users_total"]) == (
        50.0,
        float(held_out.getnnz(1).astype(bool).sum()),
    )
    users = np.unique(np.concatenate(scorer.calls))
    assert len(users) == 50
    # The same metrics as a full evaluation restricted to those users.
    only = sp.lil_matrix(held_out.shape, dtype=np.float32)
    only[users] = held_out[users]
    direct = evaluate(scorer, sp.csr_matrix(only), train, ks=(10,))
    assert sampled["recall@10"] == pytest.approx(direct["recall@10"])
    again = evaluate(scorer, held_out, train, ks=(10,), max_users=50, seed=3)
    assert again == sampled  # seeded
    full = evaluate(scorer, held_out, train, ks=(10,))
    assert full["users"] == full["users_total"] > 50
    assert sampled["recall@10"] == pytest.approx(full["recall@10"], abs=0.1)  # a fair sample
