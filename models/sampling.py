"""Negative samplers for the two-tower model: uniform, popularity, in-batch logQ, hard mining.

Item rows are int64 indices into the item table; `log_q` is the log-probability with which
a candidate was sampled, for the logQ correction in `models.losses.sampled_softmax`.
"""

import math

import torch
from torch import Tensor

# Count given to items never seen as positives, so their log-probability stays finite.
_ZERO_COUNT_FLOOR = 0.5


def _check_n(n: int) -> None:
    if n < 0:
        raise ValueError(f"number of samples n must be >= 0, got {n}")


def _check_rows(name: str, rows: Tensor, num_items: int) -> None:
    if rows.dtype != torch.int64:
        raise ValueError(f"{name} must be int64 item rows, got {rows.dtype}")
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= num_items):
        raise ValueError(f"{name} must lie in [0, {num_items}), got values outside it")


def _check_counts(counts: Tensor) -> None:
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(f"counts must be a non-empty [num_items] tensor, got {list(counts.shape)}")
    if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()):
        raise ValueError("counts must be finite and >= 0")
    if not bool((counts > 0).any()):
        raise ValueError("counts are all zero: at least one item needs a positive count")


class UniformSampler:
    """Draws item rows uniformly with replacement; every draw has `log_q = -log(num_items)`."""

    def __init__(self, num_items: int, generator: torch.Generator | None = None) -> None:
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        self.num_items = num_items
        self.generator = generator

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """Return item rows int64 `[n]` and their log_q float32 `[n]`."""
        _check_n(n)
        rows = torch.randint(0, self.num_items, (n,), generator=self.generator, dtype=torch.int64)
        log_q = torch.full((n,), -math.log(self.num_items), dtype=torch.float32)
        return rows, log_q

    def log_q(self, rows: Tensor) -> Tensor:
        """Log sampling probability float32 of each item row (the same for all)."""
        _check_rows("rows", rows, self.num_items)
        return torch.full(rows.shape, -math.log(self.num_items), dtype=torch.float32)


class PopularitySampler:
    """Draws item rows with replacement with `q_i = counts_i^alpha / sum_j counts_j^alpha`.

    `alpha=0.75` is the word2vec unigram smoothing; `alpha=0` is uniform, `alpha=1` raw
    popularity. A `generator` of None uses torch's global RNG.
    """

    def __init__(
        self, counts: Tensor, alpha: float = 0.75, generator: torch.Generator | None = None
    ) -> None:
        _check_counts(counts)
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
        weights = counts.double() ** alpha
        self.probs = (weights / weights.sum()).float()
        # Zero-count items are never drawn; their floor only keeps an explicit log_q finite.
        floored = torch.where(counts > 0, counts.double(), _ZERO_COUNT_FLOOR) ** alpha
        self._log_probs = (floored / weights.sum()).log().float()
        self.num_items = len(counts)
        self.generator = generator

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """Return item rows int64 `[n]` and the log_q float32 `[n]` of each draw."""
        _check_n(n)
        if n == 0:  # torch.multinomial refuses zero samples
            rows = torch.empty(0, dtype=torch.int64, device=self.probs.device)
        else:
            rows = torch.multinomial(self.probs, n, replacement=True, generator=self.generator)
        return rows, self._log_probs[rows]

    def log_q(self, rows: Tensor) -> Tensor:
        """Log sampling probability float32 of each int64 item row, same shape as `rows`."""
        _check_rows("rows", rows, self.num_items)
        return self._log_probs[rows]


def in_batch_log_q(counts: Tensor, rows: Tensor) -> Tensor:
    """Log-probability `log(counts[rows] / counts.sum())` that an item is a batch positive.

    `counts` `[num_items]` are positive counts in the training data; items with zero count
    are floored at 0.5 so the log is finite. Returns float32 with the shape of `rows`.
    """
    _check_counts(counts)
    _check_rows("rows", rows, len(counts))
    floored = torch.where(counts > 0, counts.double(), _ZERO_COUNT_FLOOR)
    return (floored[rows] / counts.double().sum()).log().float()


def _positive_mask(
    positive_rows: list[Tensor] | Tensor, batch: int, num_items: int, device: torch.device
) -> Tensor:
    """Boolean `[batch, num_items]` mask of each user's known positives."""
    if isinstance(positive_rows, Tensor):
        if tuple(positive_rows.shape) != (batch,):
            raise ValueError(
                f"positive_rows as a tensor must be [batch={batch}], "
                f"got {list(positive_rows.shape)}"
            )
        positive_rows = list(positive_rows.unsqueeze(1))
    if len(positive_rows) != batch:
        raise ValueError(f"positive_rows must hold {batch} entries, got {len(positive_rows)}")
    for user, rows in enumerate(positive_rows):
        if rows.dim() != 1:
            raise ValueError(f"positive_rows[{user}] must be 1-D, got {list(rows.shape)}")
    mask = torch.zeros(batch, num_items, dtype=torch.bool, device=device)
    if batch:
        flat_rows = torch.cat(list(positive_rows)).to(device)
        _check_rows("positive_rows", flat_rows, num_items)
        lengths = torch.tensor([len(rows) for rows in positive_rows], device=device)
        users = torch.arange(batch, device=device).repeat_interleave(lengths)
        mask[users, flat_rows] = True
    return mask


@torch.no_grad()
def hard_negatives(
    user_vectors: Tensor,
    item_vectors: Tensor,
    positive_rows: list[Tensor] | Tensor,
    num: int,
    skip_top: int = 0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample `num` hard negative item rows per user, int64 `[batch, num]`.

    Items are ranked by dot with `user_vectors [batch, dim]` over `item_vectors
    [num_items, dim]`, the user's positives removed. The `skip_top` best are skipped (likely
    unlabelled positives); `num` are drawn without replacement from the next `4 * num`
    (fewer if the catalogue runs out), so negatives vary between epochs.
    """
    if user_vectors.dim() != 2 or item_vectors.dim() != 2:
        raise ValueError("user_vectors must be [batch, dim] and item_vectors [num_items, dim]")
    if user_vectors.shape[1] != item_vectors.shape[1]:
        raise ValueError(
            f"user_vectors dim {user_vectors.shape[1]} != item_vectors dim {item_vectors.shape[1]}"
        )
    if num < 1 or skip_top < 0:
        raise ValueError(f"need num >= 1 and skip_top >= 0, got num={num}, skip_top={skip_top}")
    batch, num_items = len(user_vectors), len(item_vectors)
    positives = _positive_mask(positive_rows, batch, num_items, user_vectors.device)
    num_candidates = num_items - positives.sum(dim=1, keepdim=True)  # [batch, 1]
    shortest = int(num_candidates.min()) if batch else num_items
    if shortest - skip_top < num:
        raise ValueError(
            f"a user has {shortest} non-positive items, too few to skip {skip_top} and "
            f"draw {num}: lower num or skip_top"
        )

    scores = (user_vectors @ item_vectors.T).masked_fill(positives, float("-inf"))
    pool_size = min(num_items, skip_top + 4 * num)
    ranked = scores.topk(pool_size, dim=1).indices  # non-positives first, best first
    ranks = torch.arange(pool_size, device=ranked.device).unsqueeze(0)
    in_pool = (ranks >= skip_top) & (ranks < num_candidates)
    # Top-`num` of uniform keys over the pool = a uniform draw without replacement.
    keys = torch.rand(ranked.shape, generator=generator, device=ranked.device)
    picks = keys.masked_fill(~in_pool, -1.0).topk(num, dim=1).indices
    return ranked.gather(1, picks)
