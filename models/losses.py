"""Retrieval losses over tower outputs (L2-normalised embeddings, never raw features).

Shapes: `user_vectors` and `pos_vectors` are `[batch, dim]`, per-row negatives are
`[batch, num_negatives, dim]`. Scores are dot products, i.e. cosines for unit vectors.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES = ("pointwise", "pairwise-hinge", "pairwise-logistic", "listwise")


def _weighted_mean(per_row: Tensor, weights: Tensor | None) -> Tensor:
    """Mean of ``per_row [batch]``, each row weighted by ``weights [batch]`` when given:
    ``sum(w * l) / sum(w)``, so weights of all 1 give the plain mean."""
    if weights is None:
        return per_row.mean()
    _check_shape("weights", weights, tuple(per_row.shape))
    weights = weights.to(per_row.dtype)
    return (weights * per_row).sum() / weights.sum().clamp(min=torch.finfo(per_row.dtype).tiny)


def _check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")


def _check_shape(name: str, tensor: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(tensor.shape)}")


def _triplet_scores(
    user_vectors: Tensor, pos_vectors: Tensor, neg_vectors: Tensor
) -> tuple[Tensor, Tensor]:
    """Dot scores of each user with its positive `[batch]` and its negatives `[batch, n]`."""
    if user_vectors.dim() != 2:
        raise ValueError(f"user_vectors must be [batch, dim], got {list(user_vectors.shape)}")
    batch, dim = user_vectors.shape
    _check_shape("pos_vectors", pos_vectors, (batch, dim))
    if neg_vectors.dim() != 3 or neg_vectors.shape[0] != batch or neg_vectors.shape[2] != dim:
        raise ValueError(
            f"neg_vectors must be [batch={batch}, num_negatives, dim={dim}], "
            f"got {list(neg_vectors.shape)}"
        )
    pos_scores = (user_vectors * pos_vectors).sum(dim=-1)
    neg_scores = torch.einsum("bd,bnd->bn", user_vectors, neg_vectors)
    return pos_scores, neg_scores


def pointwise_bce(
    user_vectors: Tensor,
    pos_vectors: Tensor,
    neg_vectors: Tensor,
    temperature: float,
    weights: Tensor | None = None,
) -> Tensor:
    """Mean binary cross-entropy over all `batch * (1 + n)` labelled pairs, logits = dot / T
    (with `weights [batch]`, each row's `1 + n` pairs weigh its weight: see `_weighted_mean`)."""
    _check_temperature(temperature)
    pos_scores, neg_scores = _triplet_scores(user_vectors, pos_vectors, neg_vectors)
    logits = torch.cat([pos_scores.unsqueeze(1), neg_scores], dim=1) / temperature
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    per_pair = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return _weighted_mean(per_pair.mean(dim=1), weights)


def pairwise_hinge(
    user_vectors: Tensor,
    pos_vectors: Tensor,
    neg_vectors: Tensor,
    margin: float = 0.2,
    weights: Tensor | None = None,
) -> Tensor:
    """Mean over `batch * n` pairs of `relu(margin - s_pos + s_neg)`, s = cosine (rows
    weighted by `weights [batch]` when given)."""
    if not math.isfinite(margin):
        raise ValueError(f"margin must be a finite number, got {margin}")
    pos_scores, neg_scores = _triplet_scores(user_vectors, pos_vectors, neg_vectors)
    per_pair = F.relu(margin - pos_scores.unsqueeze(1) + neg_scores)
    return _weighted_mean(per_pair.mean(dim=1), weights)


def pairwise_logistic(
    user_vectors: Tensor,
    pos_vectors: Tensor,
    neg_vectors: Tensor,
    temperature: float,
    weights: Tensor | None = None,
) -> Tensor:
    """Mean over `batch * n` pairs of `softplus(-(s_pos - s_neg) / T)` (BPR with temperature;
    rows weighted by `weights [batch]` when given)."""
    _check_temperature(temperature)
    pos_scores, neg_scores = _triplet_scores(user_vectors, pos_vectors, neg_vectors)
    per_pair = F.softplus(-(pos_scores.unsqueeze(1) - neg_scores) / temperature)
    return _weighted_mean(per_pair.mean(dim=1), weights)


def _log_q_offset(name: str, log_q: Tensor | None, size: int, like: Tensor) -> Tensor:
    """`log_q` as a `[1, size]` row to subtract from a logit block (zeros when not given)."""
    if log_q is None:
        return like.new_zeros(1, size)
    _check_shape(name, log_q, (size,))
    return log_q.to(like.dtype).unsqueeze(0)


def _check_candidates(
    name: str, vectors: Tensor, rows: Tensor | None, shape: str, ok: bool, remove_hits: bool
) -> None:
    """Validate a candidate block (`ok` says its shape matches `shape`) and its item rows."""
    if not ok:
        raise ValueError(f"{name}_vectors must be {shape}, got {list(vectors.shape)}")
    if rows is None:
        if remove_hits:
            raise ValueError(
                f"{name}_item_rows is needed to remove accidental hits: pass it, "
                "or set remove_accidental_hits=False"
            )
        return
    _check_shape(f"{name}_item_rows", rows, tuple(vectors.shape[:-1]))


def sampled_softmax(
    user_vectors: Tensor,
    pos_vectors: Tensor,
    pos_item_rows: Tensor,
    temperature: float,
    pos_log_q: Tensor | None = None,
    neg_vectors: Tensor | None = None,
    neg_item_rows: Tensor | None = None,
    neg_log_q: Tensor | None = None,
    hard_vectors: Tensor | None = None,
    hard_item_rows: Tensor | None = None,
    remove_accidental_hits: bool = True,
    negative_mask: Tensor | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """Mean softmax cross-entropy of each row's positive against all candidate columns (rows
    weighted by `weights [batch]` when given).

    Columns: the batch's positives `[batch]` (in-batch negatives), optional shared sampled
    negatives `neg_vectors [m, dim]`, optional per-row hard negatives `hard_vectors
    [batch, h, dim]`. Logits are `dot / T - log_q` where log_q is given (logQ correction,
    Yi et al. 2019, applied after the temperature as in TFRS); hard negatives get no
    correction. Row i's target is column i. With `remove_accidental_hits`, any other column
    holding row i's positive item is masked out; this needs the item rows of every block.
    `negative_mask [batch, columns]` (bool, or float with 1 = masked) masks further columns,
    e.g. other items the row's user is known to like; the target column is never masked.
    """
    _check_temperature(temperature)
    if user_vectors.dim() != 2:
        raise ValueError(f"user_vectors must be [batch, dim], got {list(user_vectors.shape)}")
    batch, dim = user_vectors.shape
    _check_shape("pos_vectors", pos_vectors, (batch, dim))
    _check_shape("pos_item_rows", pos_item_rows, (batch,))
    if neg_vectors is None and (neg_item_rows is not None or neg_log_q is not None):
        raise ValueError("neg_item_rows / neg_log_q given without neg_vectors: pass all or none")
    if hard_vectors is None and hard_item_rows is not None:
        raise ValueError("hard_item_rows given without hard_vectors: pass both or neither")

    # One matmul for the shared columns (positives, then sampled negatives) with the logQ
    # offsets as its bias; the temperature scales the [batch, dim] side, the smaller one.
    scaled_users = user_vectors / temperature
    shared_vectors, shared_log_q = (
        [pos_vectors],
        [_log_q_offset("pos_log_q", pos_log_q, batch, user_vectors)],
    )
    shared_rows = [pos_item_rows]
    if neg_vectors is not None:
        ok = neg_vectors.dim() == 2 and neg_vectors.shape[1] == dim
        shape = f"[m, dim={dim}]"
        _check_candidates("neg", neg_vectors, neg_item_rows, shape, ok, remove_accidental_hits)
        shared_vectors.append(neg_vectors)
        shared_log_q.append(_log_q_offset("neg_log_q", neg_log_q, len(neg_vectors), user_vectors))
        if neg_item_rows is not None:
            shared_rows.append(neg_item_rows)
    logits = torch.addmm(-torch.cat(shared_log_q, dim=1), scaled_users, torch.cat(shared_vectors).T)
    if hard_vectors is not None:
        ok = hard_vectors.dim() == 3 and hard_vectors.shape[::2] == (batch, dim)
        shape = f"[batch={batch}, h, dim={dim}]"
        _check_candidates("hard", hard_vectors, hard_item_rows, shape, ok, remove_accidental_hits)
        hard_logits = torch.einsum("bd,bhd->bh", scaled_users, hard_vectors)
        logits = torch.cat([logits, hard_logits], dim=1)

    # Masked columns get a large finite negative (not -inf: softmax gradients stay finite),
    # added rather than filled: bool-mask kernels are several times slower on the CPU.
    masked = None
    if remove_accidental_hits:
        masked = (torch.cat(shared_rows)[None, :] == pos_item_rows[:, None]).to(logits.dtype)
        if hard_vectors is not None:
            assert hard_item_rows is not None
            hard_hits = (hard_item_rows == pos_item_rows[:, None]).to(logits.dtype)
            masked = torch.cat([masked, hard_hits], dim=1)
    if negative_mask is not None:
        _check_shape("negative_mask", negative_mask, tuple(logits.shape))
        extra = negative_mask.to(logits.dtype)
        masked = extra if masked is None else torch.maximum(masked, extra)
    if masked is not None:
        if masked is negative_mask:
            masked = masked.clone()
        masked[:, :batch].fill_diagonal_(0)  # the target column is never masked
        logits = logits.add(masked, alpha=torch.finfo(logits.dtype).min / 2)
    targets = torch.arange(batch, device=logits.device)
    if weights is None:
        return F.cross_entropy(logits, targets)
    return _weighted_mean(F.cross_entropy(logits, targets, reduction="none"), weights)


def distillation(
    user_vectors: Tensor,
    item_vectors: Tensor,
    teacher_probs: Tensor,
    temperature: float,
    known: Tensor | None = None,
) -> Tensor:
    """Mean over users of the cross-entropy of the student's softmax against a teacher's.

    The student's distribution is a softmax over the whole catalogue `item_vectors [n, dim]`
    of `dot / T`, with `known [batch, n]` (bool, or float with 1 = known; a user's training
    items) masked out;
    `teacher_probs [batch, n]` is a distribution over the same columns, zero where known.
    """
    _check_temperature(temperature)
    if user_vectors.dim() != 2 or item_vectors.dim() != 2:
        raise ValueError("user_vectors and item_vectors must be [batch, dim] and [n, dim]")
    shape = (user_vectors.shape[0], item_vectors.shape[0])
    _check_shape("teacher_probs", teacher_probs, shape)
    logits = user_vectors @ item_vectors.T / temperature
    if known is not None:
        _check_shape("known", known, shape)
        # Added, not filled: bool-mask kernels are several times slower on the CPU.
        logits = logits.add(known.to(logits.dtype), alpha=torch.finfo(logits.dtype).min / 2)
    log_probs = F.log_softmax(logits, dim=1)
    # 0 * (huge negative) is 0, so masked columns add nothing where the teacher gives them 0.
    return -(teacher_probs * log_probs).sum(dim=1).mean()
