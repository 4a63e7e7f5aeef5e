"""A teacher for distillation: EASE's view of each user as a distribution over unseen items.

The two-tower user vector comes from the user's id and profile alone (under random-811 there is
no history feature), so it must learn everything else about a user from single interactions.
EASE scores from the user's whole item set. Adding the cross-entropy against EASE's softmax to
the training loss (``[train] teacher = "ease"``) gives the towers that signal; serving stays a
pure two-tower model. EASE fits on the same training rows as the model, never on test rows.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from models.baselines import EASE

TEACHERS = ("none", "ease")


class EaseTeacher:
    """Soft targets ``softmax(EASE score / temperature)`` over each user's unknown items.

    The targets never change, so when a ``[users, items]`` table of them fits in
    ``cache_cells`` floats they are computed once (ml-100k: 1.6M cells, 6 MB) instead of a
    sparse-dense product per batch.
    """

    def __init__(
        self, train: sp.csr_matrix, reg: float, temperature: float, cache_cells: int = 50_000_000
    ):
        if not temperature > 0:
            raise ValueError(f"teacher temperature must be > 0, got {temperature}")
        try:
            self.ease = EASE(train, train, reg=reg)
        except ValueError as exc:
            raise ValueError(f"[train] teacher = 'ease' cannot be used: {exc}") from exc
        self.known = sp.csr_matrix(train, dtype=np.float32)
        self.temperature = temperature
        self.cache: tuple[Tensor, Tensor] | None = None
        n_users, n_items = train.shape
        if n_users * n_items <= cache_cells:
            self.cache = self._compute(np.arange(n_users))

    def targets(self, users: np.ndarray) -> tuple[Tensor, Tensor]:
        """``(probs, known)``, both ``[len(users), n_items]``; probs are 0 on known items,
        ``known`` is 1.0 on a user's training items, else 0.0."""
        if self.cache is not None:
            index = torch.from_numpy(np.asarray(users, dtype=np.int64))
            return self.cache[0].index_select(0, index), self.cache[1].index_select(0, index)
        return self._compute(users)

    def _compute(self, users: np.ndarray) -> tuple[Tensor, Tensor]:
        scores = torch.from_numpy(self.ease.score(users)) / self.temperature
        known = torch.from_numpy(self.known[users].toarray() > 0)
        scores = scores.masked_fill(known, -torch.inf)
        # A user who knows every item has nothing to be taught: an all-zero row.
        probs = torch.softmax(scores, dim=1).nan_to_num(0.0)
        return probs, known.float()
