"""Samplers against exact probabilities, seeded frequencies and hand-built rankings."""

import math

import pytest
import torch

from models.sampling import PopularitySampler, UniformSampler, hard_negatives, in_batch_log_q


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_uniform_sampler_log_q_is_exactly_minus_log_num_items() -> None:
    rows, log_q = UniformSampler(40, seeded(0)).sample(1000)
    assert rows.dtype == torch.int64 and log_q.dtype == torch.float32
    assert rows.shape == (1000,) and int(rows.min()) >= 0 and int(rows.max()) < 40
    assert torch.equal(log_q, torch.full((1000,), math.log(1 / 40), dtype=torch.float32))


def test_uniform_sampler_same_seed_gives_same_draws() -> None:
    first = UniformSampler(1000, seeded(3)).sample(64)
    second = UniformSampler(1000, seeded(3)).sample(64)
    other = UniformSampler(1000, seeded(4)).sample(64)
    assert torch.equal(first[0], second[0])
    assert not torch.equal(first[0], other[0])


def test_samplers_draw_zero_rows_when_asked_for_none() -> None:
    rows, log_q = UniformSampler(5, seeded(0)).sample(0)
    assert rows.shape == (0,) and log_q.shape == (0,)
    rows, log_q = PopularitySampler(torch.ones(5), generator=seeded(0)).sample(0)
    assert rows.shape == (0,) and rows.dtype == torch.int64 and log_q.shape == (0,)


@pytest.mark.parametrize("num_items", [0, -3])
def test_uniform_sampler_rejects_an_empty_catalogue(num_items: int) -> None:
    with pytest.raises(ValueError, match="num_items"):
        UniformSampler(num_items, seeded(0))


def test_samplers_reject_a_negative_sample_size() -> None:
    with pytest.raises(ValueError, match="n must be >= 0"):
        UniformSampler(5, seeded(0)).sample(-1)
    with pytest.raises(ValueError, match="n must be >= 0"):
        PopularitySampler(torch.ones(5), generator=seeded(0)).sample(-1)


# counts [1, 2, 4, 8, 0] with alpha 0.75: weights c^0.75 = 1, 2^0.75, 4^0.75 = 2^1.5,
# 8^0.75 = 2^2.25, 0; q_i = weight_i / sum.
COUNTS = torch.tensor([1.0, 2.0, 4.0, 8.0, 0.0])
WEIGHTS = [1.0, 2**0.75, 2**1.5, 2**2.25, 0.0]
Q = [w / sum(WEIGHTS) for w in WEIGHTS]


def test_popularity_sampler_frequencies_match_q() -> None:
    draws = 200_000
    rows, _ = PopularitySampler(COUNTS, alpha=0.75, generator=seeded(11)).sample(draws)
    observed = torch.bincount(rows, minlength=5).tolist()
    assert observed[4] == 0  # a zero-count item has q = 0
    chi_square = sum((observed[i] - draws * Q[i]) ** 2 / (draws * Q[i]) for i in range(4))
    # 3 degrees of freedom; 16.27 is the 99.9% quantile of chi-square(3).
    assert chi_square < 16.27


def test_popularity_sampler_log_q_of_each_draw_is_log_of_its_q() -> None:
    rows, log_q = PopularitySampler(COUNTS, alpha=0.75, generator=seeded(5)).sample(50)
    expected = torch.tensor([math.log(Q[r]) for r in rows.tolist()], dtype=torch.float32)
    assert log_q.dtype == torch.float32
    torch.testing.assert_close(log_q, expected)


def test_popularity_sampler_log_q_is_finite_for_never_drawn_items() -> None:
    sampler = PopularitySampler(COUNTS, alpha=1.0, generator=seeded(0))
    # alpha 1: q = counts / 15; the zero count is floored at 0.5 -> log(0.5 / 15).
    expected = torch.tensor([math.log(8 / 15), math.log(1 / 15), math.log(0.5 / 15)])
    torch.testing.assert_close(sampler.log_q(torch.tensor([3, 0, 4])), expected)


def test_popularity_sampler_same_seed_gives_same_draws() -> None:
    first = PopularitySampler(COUNTS, generator=seeded(9)).sample(100)
    second = PopularitySampler(COUNTS, generator=seeded(9)).sample(100)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize(
    "counts", [torch.zeros(3), torch.tensor([1.0, -1.0]), torch.ones(2, 2), torch.ones(0)]
)
def test_popularity_sampler_rejects_unusable_counts(counts: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="counts"):
        PopularitySampler(counts, generator=seeded(0))


def test_popularity_sampler_rejects_rows_outside_the_catalogue() -> None:
    sampler = PopularitySampler(COUNTS, generator=seeded(0))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        sampler.log_q(torch.tensor([5]))


def test_in_batch_log_q_is_log_of_count_share_with_zero_floored() -> None:
    # counts [3, 1, 0], total 4: log(3/4), log(1/4), and the zero floored to log(0.5/4).
    log_q = in_batch_log_q(torch.tensor([3.0, 1.0, 0.0]), torch.tensor([0, 1, 2, 0]))
    expected = torch.tensor([math.log(3 / 4), math.log(1 / 4), math.log(0.5 / 4), math.log(3 / 4)])
    torch.testing.assert_close(log_q, expected)


# Ten items on the x-axis, item i = [1 - 0.1 i, 0]: for user [1, 0] the score is 1 - 0.1 i,
# so the ranking is simply item 0, 1, 2, ... 9.
RANKED_ITEMS = torch.stack([1 - 0.1 * torch.arange(10.0), torch.zeros(10)], dim=1)
USER = torch.tensor([[1.0, 0.0]])


def test_hard_negatives_draw_from_the_pool_after_skipping_the_best() -> None:
    # Positive item 2 removed -> ranking 0, 1, 3, 4, 5, ...; skip_top=1 drops item 0; the pool
    # is the next 4 * num = 4 items: {1, 3, 4, 5}. Over many seeds every pool item appears.
    seen = set()
    for seed in range(60):
        rows = hard_negatives(USER, RANKED_ITEMS, [torch.tensor([2])], 1, 1, seeded(seed))
        assert rows.shape == (1, 1) and rows.dtype == torch.int64
        seen.add(int(rows[0, 0]))
    assert seen == {1, 3, 4, 5}


def test_hard_negatives_return_the_top_candidates_when_the_pool_is_exhausted() -> None:
    # Four items, user 0 owns item 1, user 1 owns items 0 and 3. User 0's non-positives are
    # {0, 2, 3}; with num=3 the pool is exactly those. User 1 has only {1, 2} left: num=2.
    items = RANKED_ITEMS[:4]
    users = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    rows = hard_negatives(users[:1], items, [torch.tensor([1])], num=3, generator=seeded(0))
    assert sorted(rows[0].tolist()) == [0, 2, 3]
    rows = hard_negatives(users[1:], items, [torch.tensor([0, 3])], num=2, generator=seeded(0))
    assert sorted(rows[0].tolist()) == [1, 2]


def test_hard_negatives_never_return_a_positive_and_never_repeat() -> None:
    generator = seeded(1)
    users = torch.nn.functional.normalize(torch.randn(16, 4, generator=generator), dim=1)
    items = torch.nn.functional.normalize(torch.randn(50, 4, generator=generator), dim=1)
    positives = [torch.randint(0, 50, (5,), generator=generator) for _ in range(16)]
    rows = hard_negatives(users, items, positives, num=6, skip_top=2, generator=generator)
    assert rows.shape == (16, 6)
    for user in range(16):
        assert not set(rows[user].tolist()) & set(positives[user].tolist())
        assert len(set(rows[user].tolist())) == 6
        # Each pick is ranked within the top skip_top + 4 * num of the non-positives.
        scores = items @ users[user]
        scores[positives[user]] = float("-inf")
        order = scores.argsort(descending=True).tolist()
        assert all(2 <= order.index(row) < 2 + 24 for row in rows[user].tolist())


def test_hard_negatives_accept_one_positive_row_per_user_as_a_tensor() -> None:
    users = torch.tensor([[1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    rows = hard_negatives(users, RANKED_ITEMS, torch.tensor([0, 1]), num=1, generator=seeded(2))
    assert rows[0, 0] != 0 and rows[1, 0] != 1 and not rows.requires_grad


def test_hard_negatives_same_seed_gives_same_rows() -> None:
    users = USER.expand(3, 2)
    positives = torch.tensor([0, 1, 2])
    first = hard_negatives(users, RANKED_ITEMS, positives, num=2, generator=seeded(7))
    second = hard_negatives(users, RANKED_ITEMS, positives, num=2, generator=seeded(7))
    assert torch.equal(first, second)


def test_hard_negatives_reject_a_pool_too_small_for_num() -> None:
    with pytest.raises(ValueError, match="too few"):
        hard_negatives(USER, RANKED_ITEMS[:4], [torch.tensor([1])], num=2, skip_top=2)


def test_hard_negatives_reject_positive_rows_for_another_batch_size() -> None:
    with pytest.raises(ValueError, match="positive_rows"):
        hard_negatives(USER, RANKED_ITEMS, torch.tensor([0, 1]), num=1)


def test_hard_negatives_reject_mismatched_dims() -> None:
    with pytest.raises(ValueError, match="dim"):
        hard_negatives(torch.ones(1, 3), RANKED_ITEMS, torch.tensor([0]), num=1)
