"""Losses against numbers derived by hand from the formulas (derivations in comments)."""

import math

import pytest
import torch

from models.losses import (
    LOSSES,
    distillation,
    pairwise_hinge,
    pairwise_logistic,
    pointwise_bce,
    sampled_softmax,
)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def cross_entropy(target_logit: float, all_logits: list[float]) -> float:
    return -target_logit + math.log(sum(math.exp(z) for z in all_logits))


def t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# Users u0=[1,0], u1=[0,1]; positives p0=[0.6,0.8], p1=[0.8,0.6]. Scores s(u0,p0)=0.6,
# s(u1,p1)=0.6, s(u0,p1)=0.8, s(u1,p0)=0.8.
USERS = t([[1.0, 0.0], [0.0, 1.0]])
POSITIVES = t([[0.6, 0.8], [0.8, 0.6]])
# Per-row negatives: row 0 gets [0.8,-0.6] (s=0.8) and [0,1] (s=0); row 1 gets [1,0] (s=0)
# and [0,1] (s=1).
NEGATIVES = t([[[0.8, -0.6], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])


def test_losses_lists_the_four_loss_names() -> None:
    assert LOSSES == ("pointwise", "pairwise-hinge", "pairwise-logistic", "listwise")


def test_pointwise_bce_averages_over_every_labelled_pair() -> None:
    # T=0.5: positive logits 0.6/0.5=1.2 (both rows); negative logits 1.6, 0 (row 0), 0, 2 (row 1).
    # BCE(label 1, z) = softplus(-z); BCE(label 0, z) = softplus(z); mean over 2*(1+2)=6 pairs.
    expected = (
        2 * softplus(-1.2) + softplus(1.6) + softplus(0.0) + softplus(0.0) + softplus(2.0)
    ) / 6
    loss = pointwise_bce(USERS, POSITIVES, NEGATIVES, temperature=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_pairwise_hinge_is_mean_of_margin_violations() -> None:
    # margin 0.2, s_pos=0.6: row 0 relu(0.2-0.6+0.8)=0.4, relu(0.2-0.6+0)=0;
    # row 1 relu(0.2-0.6+0)=0, relu(0.2-0.6+1)=0.6. Mean over 4 pairs = 1.0/4 = 0.25.
    loss = pairwise_hinge(USERS, POSITIVES, NEGATIVES, margin=0.2)
    assert loss.item() == pytest.approx(0.25, rel=1e-6)


def test_pairwise_logistic_is_mean_softplus_of_scaled_score_gaps() -> None:
    # s_pos - s_neg: row 0 0.6-0.8=-0.2, 0.6-0=0.6; row 1 0.6-0=0.6, 0.6-1=-0.4.
    # T=0.5: softplus(-gap/T) = softplus(0.4), softplus(-1.2), softplus(-1.2), softplus(0.8).
    expected = (softplus(0.4) + 2 * softplus(-1.2) + softplus(0.8)) / 4
    loss = pairwise_logistic(USERS, POSITIVES, NEGATIVES, temperature=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_sampled_softmax_uses_in_batch_positives_as_negatives() -> None:
    # u @ p.T = [[0.6, 0.8], [0.8, 0.6]]; T=0.5 -> [[1.2, 1.6], [1.6, 1.2]]; targets on diagonal.
    expected = (cross_entropy(1.2, [1.2, 1.6]) + cross_entropy(1.2, [1.6, 1.2])) / 2
    loss = sampled_softmax(USERS, POSITIVES, torch.tensor([0, 1]), temperature=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_log_q_correction_subtracts_log_q_from_every_in_batch_column() -> None:
    # q = [0.75, 0.25]. Logits become s/T - log q_j, so exp(logit) = exp(s/T) / q_j, the
    # target column included: row 0 [1.2 - log .75, 1.6 - log .25],
    # row 1 [1.6 - log .75, 1.2 - log .25] (target is column 1).
    q = [0.75, 0.25]
    row0 = cross_entropy(1.2 - math.log(q[0]), [1.2 - math.log(q[0]), 1.6 - math.log(q[1])])
    row1 = cross_entropy(1.2 - math.log(q[1]), [1.6 - math.log(q[0]), 1.2 - math.log(q[1])])
    loss = sampled_softmax(
        USERS, POSITIVES, torch.tensor([0, 1]), 0.5, pos_log_q=torch.tensor(q).log()
    )
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_log_q_correction_with_equal_probabilities_leaves_loss_unchanged() -> None:
    # Subtracting the same constant from every column of a softmax changes nothing.
    rows = torch.tensor([0, 1])
    plain = sampled_softmax(USERS, POSITIVES, rows, 0.5)
    uniform = sampled_softmax(USERS, POSITIVES, rows, 0.5, pos_log_q=torch.full((2,), -3.0))
    assert uniform.item() == pytest.approx(plain.item(), rel=1e-6)


# Rows 0 and 1 share positive item 7 (same vector [0.6,0.8]); row 2 has item 3 = [1,0].
# Users u0=[1,0], u1=[0,1], u2=[0.6,0.8]; T=1. u @ p.T:
#   row 0: [0.6, 0.6, 1.0]   row 1: [0.8, 0.8, 0.0]   row 2: [1.0, 1.0, 0.6]
SHARED_USERS = t([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
SHARED_POSITIVES = t([[0.6, 0.8], [0.6, 0.8], [1.0, 0.0]])
SHARED_ROWS = torch.tensor([7, 7, 3])


def test_accidental_hit_column_is_dropped_from_the_softmax() -> None:
    # Row 0 drops column 1 (item 7 again), row 1 drops column 0; row 2 has no hit.
    row0 = cross_entropy(0.6, [0.6, 1.0])
    row1 = cross_entropy(0.8, [0.8, 0.0])
    row2 = cross_entropy(0.6, [1.0, 1.0, 0.6])
    loss = sampled_softmax(SHARED_USERS, SHARED_POSITIVES, SHARED_ROWS, temperature=1.0)
    assert loss.item() == pytest.approx((row0 + row1 + row2) / 3, rel=1e-6)


def test_accidental_hits_count_as_negatives_when_removal_is_off() -> None:
    row0 = cross_entropy(0.6, [0.6, 0.6, 1.0])
    row1 = cross_entropy(0.8, [0.8, 0.8, 0.0])
    row2 = cross_entropy(0.6, [1.0, 1.0, 0.6])
    loss = sampled_softmax(
        SHARED_USERS, SHARED_POSITIVES, SHARED_ROWS, 1.0, remove_accidental_hits=False
    )
    assert loss.item() == pytest.approx((row0 + row1 + row2) / 3, rel=1e-6)


def test_extra_negatives_are_scaled_then_log_q_corrected_and_hit_masked() -> None:
    # Positive items [0, 1]; extra negatives n0=[-1,0] (item 5, q=0.1), n1=[0.6,0.8]
    # (item 0, q=0.2). T=0.5, logit = s/T - log q, so exp(logit) = exp(s/T) / q.
    # Row 0, u=[1,0]: in-batch [1.2, 1.6]; extras s=[-1, 0.6] -> [-2, 1.2]; n1 is item 0,
    #   row 0's positive, so it is masked: softmax over e^1.2, e^1.6, e^-2/0.1.
    # Row 1, u=[0,1]: in-batch [1.6, 1.2]; extras s=[0, 0.8] -> [0, 1.6]; no hit:
    #   softmax over e^1.6, e^1.2, e^0/0.1, e^1.6/0.2; target column 1 (logit 1.2).
    row0 = -1.2 + math.log(math.exp(1.2) + math.exp(1.6) + math.exp(-2.0) / 0.1)
    row1 = -1.2 + math.log(math.exp(1.6) + math.exp(1.2) + 1 / 0.1 + math.exp(1.6) / 0.2)
    loss = sampled_softmax(
        USERS,
        POSITIVES,
        torch.tensor([0, 1]),
        temperature=0.5,
        neg_vectors=t([[-1.0, 0.0], [0.6, 0.8]]),
        neg_item_rows=torch.tensor([5, 0]),
        neg_log_q=torch.tensor([0.1, 0.2]).log(),
    )
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_hard_negatives_join_their_own_row_without_log_q_correction() -> None:
    # pos q = [0.75, 0.25] corrects the in-batch columns only. T=0.5.
    # Row 0, u=[1,0]: in-batch e^1.2/.75, e^1.6/.25; hard [0,1] (item 4) s=0 -> e^0,
    #   hard [0.6,0.8] is item 0 = row 0's positive, masked. Target logit 1.2 - log .75.
    # Row 1, u=[0,1]: in-batch e^1.6/.75, e^1.2/.25; hard [0,-1] s=-1 -> e^-2, [1,0] s=0 -> e^0.
    #   Target logit 1.2 - log .25.
    row0 = -(1.2 - math.log(0.75)) + math.log(
        math.exp(1.2) / 0.75 + math.exp(1.6) / 0.25 + math.exp(0.0)
    )
    row1 = -(1.2 - math.log(0.25)) + math.log(
        math.exp(1.6) / 0.75 + math.exp(1.2) / 0.25 + math.exp(-2.0) + math.exp(0.0)
    )
    loss = sampled_softmax(
        USERS,
        POSITIVES,
        torch.tensor([0, 1]),
        temperature=0.5,
        pos_log_q=torch.tensor([0.75, 0.25]).log(),
        hard_vectors=t([[[0.0, 1.0], [0.6, 0.8]], [[0.0, -1.0], [1.0, 0.0]]]),
        hard_item_rows=torch.tensor([[4, 0], [6, 7]]),
    )
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_gradients_are_finite_and_zero_through_masked_columns() -> None:
    users = SHARED_USERS.clone().requires_grad_()
    positives = SHARED_POSITIVES.clone().requires_grad_()
    # Row 2's second hard negative is its own positive item 3: masked, so no gradient.
    hard = t([[[0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])
    hard.requires_grad_()
    loss = sampled_softmax(
        users,
        positives,
        SHARED_ROWS,
        temperature=0.05,
        pos_log_q=torch.tensor([-1.0, -1.0, -5.0]),
        hard_vectors=hard,
        hard_item_rows=torch.tensor([[1, 2], [1, 2], [1, 3]]),
    )
    loss.backward()
    for grad in (users.grad, positives.grad, hard.grad):
        assert grad is not None and torch.isfinite(grad).all()
    assert hard.grad is not None and torch.equal(hard.grad[2, 1], torch.zeros(2))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("loss_fn", [pointwise_bce, pairwise_logistic])
@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_pair_losses_reject_a_non_positive_temperature(loss_fn, temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        loss_fn(USERS, POSITIVES, NEGATIVES, temperature)


def test_pair_losses_reject_negatives_of_another_batch_size() -> None:
    with pytest.raises(ValueError, match="neg_vectors"):
        pairwise_hinge(USERS, POSITIVES, NEGATIVES[:1])


def test_sampled_softmax_rejects_mismatched_item_rows() -> None:
    with pytest.raises(ValueError, match="pos_item_rows"):
        sampled_softmax(USERS, POSITIVES, torch.tensor([0, 1, 2]), 1.0)


def test_sampled_softmax_needs_negative_item_rows_to_remove_hits() -> None:
    with pytest.raises(ValueError, match="neg_item_rows"):
        sampled_softmax(USERS, POSITIVES, torch.tensor([0, 1]), 1.0, neg_vectors=USERS)


# Distillation: user u0=[1,0]; items [1,0], [0,1], [-1,0] give logits 1, 0, -1 at T=1.
CATALOGUE = t([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])


def test_distillation_is_cross_entropy_against_the_teacher_over_unknown_items() -> None:
    # Item 2 is known, so the student's softmax is over logits [1, 0]: log p = [1 - L, -L],
    # L = log(e + 1). Teacher [0.5, 0.5, 0] -> loss = -(0.5 (1 - L) + 0.5 (-L)) = L - 0.5.
    teacher = t([[0.5, 0.5, 0.0]])
    known = torch.tensor([[False, False, True]])
    loss = distillation(t([[1.0, 0.0]]), CATALOGUE, teacher, 1.0, known)
    assert loss.item() == pytest.approx(math.log(math.e + 1) - 0.5, rel=1e-6)


def test_distillation_without_a_mask_spreads_over_the_whole_catalogue_and_averages_rows() -> None:
    # Row 0 as above but with item 2 in the softmax: L = log(e + 1 + 1/e); row 1 = [0, 1]
    # has logits [0, 1/0.5=2, 0] at T = 0.5 and a teacher all on item 1: loss log(2 + e^2) - 2.
    users = t([[1.0, 0.0], [0.0, 1.0]])
    teacher = t([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    loss = distillation(users, CATALOGUE, teacher, 0.5)
    row0 = math.log(math.exp(2) + 1 + math.exp(-2)) - 0.5 * 2
    row1 = math.log(2 + math.exp(2)) - 2
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_distillation_is_lowest_where_the_student_matches_the_teacher() -> None:
    user = t([[1.0, 0.0]])
    student = torch.softmax(t([[1.0, 0.0, -1.0]]), dim=1)
    entropy = -(student * student.log()).sum().item()
    assert distillation(user, CATALOGUE, student, 1.0).item() == pytest.approx(entropy, rel=1e-6)
    other = t([[0.1, 0.2, 0.7]])
    other_entropy = -(other * other.log()).sum().item()
    assert distillation(user, CATALOGUE, other, 1.0).item() > other_entropy


def test_distillation_gradients_are_finite_with_masked_columns() -> None:
    user = t([[1.0, 0.0]]).requires_grad_()
    known = torch.tensor([[False, True, True]])
    distillation(user, CATALOGUE, t([[1.0, 0.0, 0.0]]), 0.1, known).backward()
    assert user.grad is not None and torch.isfinite(user.grad).all()


def test_distillation_rejects_teacher_rows_of_another_shape() -> None:
    with pytest.raises(ValueError, match="teacher_probs"):
        distillation(t([[1.0, 0.0]]), CATALOGUE, t([[0.5, 0.5]]), 1.0)


def _vectors(batch: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    unit = [torch.nn.functional.normalize(torch.randn(*s, 4, generator=g), dim=-1)
            for s in ((batch,), (batch,), (batch, n))]  # fmt: skip
    return unit[0], unit[1], unit[2]


WEIGHTED = {
    "pointwise": lambda u, p, n, w: pointwise_bce(u, p, n, 0.5, w),
    "pairwise-hinge": lambda u, p, n, w: pairwise_hinge(u, p, n, 0.2, w),
    "pairwise-logistic": lambda u, p, n, w: pairwise_logistic(u, p, n, 0.5, w),
    "listwise": lambda u, p, n, w: sampled_softmax(
        u,
        p,
        torch.arange(len(u)),
        0.5,
        neg_vectors=n[0],
        neg_item_rows=torch.arange(10, 13),
        weights=w,
    ),  # fmt: skip
}


@pytest.mark.parametrize("loss", sorted(WEIGHTED))
def test_weights_make_the_loss_the_weighted_mean_of_the_rows_terms(loss: str) -> None:
    """sum(w_i * l_i) / sum(w_i), where l_i is row i's term (what a weight of 1 on row i alone
    gives); weights of all 1 give the unweighted loss."""
    fn, (users, pos, neg) = WEIGHTED[loss], _vectors(4, 3, seed=1)
    rows = [fn(users, pos, neg, torch.eye(4)[i]).item() for i in range(4)]
    weights = torch.tensor([0.5, 2.0, 0.0, 1.5])
    expected = sum(w * r for w, r in zip(weights.tolist(), rows, strict=True)) / 4.0
    assert fn(users, pos, neg, weights).item() == pytest.approx(expected, rel=1e-5)
    assert fn(users, pos, neg, torch.ones(4)).item() == pytest.approx(
        fn(users, pos, neg, None).item(), rel=1e-6
    )
    assert len(set(rows)) == 4  # the rows differ, so a weight that did nothing would show
