"""The EASE teacher: soft targets over each user's unknown items, and where it cannot be used."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from models.baselines import EASE
from models.teacher import EaseTeacher

# 4 users x 5 items; items 0 and 1 always go together, as do 2 and 3.
TRAIN = sp.csr_matrix(
    np.array(
        [
            [1, 1, 0, 0, 0],
            [1, 0, 0, 0, 1],
            [0, 0, 1, 1, 0],
            [1, 1, 1, 1, 1],
        ],
        dtype=np.float32,
    )
)


def test_targets_are_a_softmax_of_ease_scores_over_unknown_items() -> None:
    teacher = EaseTeacher(TRAIN, reg=1.0, temperature=0.5)
    probs, known = teacher.targets(np.array([1, 2]))
    assert torch.equal(known, torch.from_numpy(TRAIN[[1, 2]].toarray() > 0).float())
    assert torch.all(probs[known == 1] == 0)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2))
    scores = EASE(TRAIN, TRAIN, reg=1.0).score(np.array([1]))[0]
    unknown = [1, 2, 3]  # user 1 knows items 0 and 4
    expected = torch.softmax(torch.tensor(scores[unknown]) / 0.5, dim=0)
    assert torch.allclose(probs[0, unknown], expected, atol=1e-6)
    # User 1 knows item 0, which goes with item 1: item 1 is the teacher's first choice.
    assert probs[0].argmax().item() == 1


def test_a_lower_temperature_sharpens_the_targets() -> None:
    sharp, _ = EaseTeacher(TRAIN, 1.0, 0.05).targets(np.array([1]))
    soft, _ = EaseTeacher(TRAIN, 1.0, 5.0).targets(np.array([1]))
    assert sharp.max() > soft.max()


def test_a_user_who_knows_every_item_gets_no_targets() -> None:
    probs, known = EaseTeacher(TRAIN, 1.0, 0.5).targets(np.array([3]))
    assert (known == 1).all() and torch.equal(probs, torch.zeros(1, 5))


def test_a_catalogue_too_big_for_ease_is_refused_naming_the_setting() -> None:
    wide = sp.csr_matrix((2, 20_001), dtype=np.float32)
    with pytest.raises(ValueError, match=r"teacher = 'ease' cannot be used.*20001x20001"):
        EaseTeacher(wide, 1.0, 0.5)


def test_a_non_positive_temperature_is_refused() -> None:
    with pytest.raises(ValueError, match="temperature"):
        EaseTeacher(TRAIN, 1.0, 0.0)


def test_cached_and_computed_targets_agree() -> None:
    users = np.array([2, 0, 1, 0])
    cached = EaseTeacher(TRAIN, 1.0, 0.5)
    computed = EaseTeacher(TRAIN, 1.0, 0.5, cache_cells=0)
    assert cached.cache is not None and computed.cache is None
    for a, b in zip(cached.targets(users), computed.targets(users), strict=True):
        assert torch.equal(a, b)
