import math

import numpy as np
import pytest
import scipy.sparse as sp

from models.baselines import EASE, ItemKNN, MostPopular, build_baselines

# 3 users x 3 items: columns are item 0 = [1,1,0], item 1 = [1,1,1], item 2 = [0,1,1].
# Norms sqrt(2), sqrt(3), sqrt(2); dot products (0,1) = 2, (0,2) = 1, (1,2) = 2, so
# cos(0,1) = cos(1,2) = 2/sqrt(6) and cos(0,2) = 1/2.
KNN_TRAIN = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=np.float32))
COS_01 = 2 / math.sqrt(6)

# 4 users x 4 items for EASE.
EASE_TRAIN = sp.csr_matrix(
    np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1], [0, 0, 1, 1]], dtype=np.float32)
)


def test_most_popular_ranks_items_by_training_count() -> None:
    train = sp.csr_matrix(
        np.array([[1, 1, 0, 0], [1, 1, 0, 1], [0, 1, 0, 0]], dtype=np.float32)
    )  # counts per item: 2, 3, 0, 1
    scores = MostPopular(train).score(np.array([0, 2], dtype=np.int64))
    assert scores.dtype == np.float32
    np.testing.assert_array_equal(scores, [[2, 3, 0, 1], [2, 3, 0, 1]])
    np.testing.assert_array_equal(np.argsort(-scores[0], kind="stable"), [1, 0, 3, 2])


def test_itemknn_similarity_is_hand_computed_cosine_with_zero_diagonal() -> None:
    model = ItemKNN(KNN_TRAIN, KNN_TRAIN, k=2)
    expected = np.array([[0, COS_01, 0.5], [COS_01, 0, COS_01], [0.5, COS_01, 0]])
    np.testing.assert_allclose(model.similarity.toarray(), expected, rtol=1e-6)


def test_itemknn_scores_sum_similarities_of_profile_items() -> None:
    # Profile of user 0 is {0, 1} here, taken from `profile`, not from `train`:
    # score_j = sim[0, j] + sim[1, j] = [cos01, cos01, 1/2 + cos01].
    profile = sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=np.float32))
    scores = ItemKNN(KNN_TRAIN, profile, k=2).score(np.array([0], dtype=np.int64))
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, [[COS_01, COS_01, 0.5 + COS_01]], rtol=1e-6)


def test_itemknn_keeps_top_k_neighbours_per_item_and_applies_shrink() -> None:
    # k=1: item 0's best neighbour is item 1 (cos01 > 1/2), item 2's is item 1 as well;
    # item 1 ties between 0 and 2 and keeps exactly one of them.
    # shrink=1 turns cos01 into 2 / (sqrt(2) sqrt(3) + 1).
    similarity = ItemKNN(KNN_TRAIN, KNN_TRAIN, k=1, shrink=1.0).similarity.toarray()
    shrunk = 2 / (math.sqrt(6) + 1)
    assert similarity[1, 0] == pytest.approx(shrunk)
    assert similarity[1, 2] == pytest.approx(shrunk)
    assert similarity[2, 0] == 0.0 and similarity[0, 2] == 0.0
    np.testing.assert_array_equal(np.count_nonzero(similarity, axis=0), [1, 1, 1])


def test_ease_matches_closed_form_and_has_zero_diagonal() -> None:
    reg = 1.0
    x = EASE_TRAIN.toarray().astype(np.float64)
    precision = np.linalg.inv(x.T @ x + reg * np.eye(4))
    expected = np.eye(4) - precision / np.diag(precision)  # Steck 2019, eq. 8
    model = EASE(EASE_TRAIN, EASE_TRAIN, reg=reg)
    np.testing.assert_allclose(model.weights, expected, atol=1e-6)
    np.testing.assert_array_equal(np.diag(model.weights), np.zeros(4))
    # Independent check of optimality: the constrained least-squares solution satisfies
    # (X^T X + reg I) B - X^T X = -diag(lambda), i.e. zero off the diagonal.
    residual = (x.T @ x + reg * np.eye(4)) @ model.weights.astype(np.float64) - x.T @ x
    np.testing.assert_allclose(residual - np.diag(np.diag(residual)), 0.0, atol=1e-5)


def test_ease_scores_profile_rows_times_weights() -> None:
    profile = sp.csr_matrix(np.array([[0, 0, 0, 1]] * 4, dtype=np.float32))
    model = EASE(EASE_TRAIN, profile, reg=1.0)
    scores = model.score(np.array([1, 3], dtype=np.int64))
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, np.stack([model.weights[3]] * 2), rtol=1e-6)


def test_ease_refuses_catalogue_above_max_items() -> None:
    with pytest.raises(ValueError, match="max_items=3"):
        EASE(EASE_TRAIN, EASE_TRAIN, max_items=3)


def test_build_baselines_scores_full_catalogue_in_float32() -> None:
    users = np.array([0, 2], dtype=np.int64)
    for name, scorer in build_baselines(EASE_TRAIN, EASE_TRAIN).items():
        scores = scorer.score(users)
        assert scores.shape == (2, 4), name
        assert scores.dtype == np.float32, name


def test_itemknn_column_blocks_do_not_change_similarity() -> None:
    whole = ItemKNN(EASE_TRAIN, EASE_TRAIN, k=2).similarity.toarray()
    blocked = ItemKNN(EASE_TRAIN, EASE_TRAIN, k=2, block_size=1).similarity.toarray()
    np.testing.assert_array_equal(blocked, whole)
