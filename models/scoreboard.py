"""Test metrics of the model and the baselines, on one split and one evaluator."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from models.baselines import EASE, ItemKNN, MostPopular
from models.encoding import EncodedData, Histories
from models.evaluate import Scorer, evaluate, evaluated_users, interaction_matrix
from models.inputs import Inputs
from models.train import all_item_vectors, user_vectors
from models.two_tower import TwoTower

log = logging.getLogger(__name__)
EASE_MAX_ITEMS = 20_000  # a dense items x items inverse: 20k items is 3 GiB in float64


class VectorScorer:
    """Scores users against items from precomputed vectors (the model as an evaluator Scorer)."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, rows: np.ndarray, n_users: int):
        self.items = items.numpy()
        self.users = np.zeros((n_users, items.shape[1]), dtype=np.float32)
        self.users[rows] = users.numpy()

    def score(self, users: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self.users[users] @ self.items[start:stop].T


def model_metrics(
    model: TwoTower,
    inputs: Inputs,
    truth: sp.csr_matrix,
    exclude: sp.csr_matrix,
    max_users: int = 0,
    seed: int = 0,
) -> dict[str, float]:
    """Full-ranking metrics of the model for the users that have truth items (or a seeded
    sample of ``max_users`` of them; only their vectors are computed)."""
    rows, _ = evaluated_users(truth, max_users, seed)
    scorer = VectorScorer(
        user_vectors(model, inputs, rows), all_item_vectors(model, inputs), rows, truth.shape[0]
    )
    return evaluate(scorer, truth, exclude, max_users=max_users, seed=seed)


def interactions(data: EncodedData, rows: np.ndarray) -> sp.csr_matrix:
    """The interactions ``rows`` as a binary users x items matrix."""
    return interaction_matrix(
        data.inter_users[rows], data.inter_items[rows], data.n_users, data.n_items
    )


class Scoreboard:
    """The test part of a split, and the baselines that fit its catalogue.

    Baselines are fitted on ``train_m`` (what the model was trained on) and score users from
    their ``known`` rows; items in ``known`` are excluded from every ranking (under
    ``cold-users`` nothing is: the held-out users have no profile, and only most-popular
    applies). EASE needs a dense items x items inverse: above ``EASE_MAX_ITEMS`` it is skipped
    and the reason logged and kept in ``skipped``.
    """

    def __init__(
        self,
        data: EncodedData,
        split: Any,
        known: np.ndarray,
        train_m: sp.csr_matrix,
        test_m: sp.csr_matrix,
        max_users: int = 0,
        seed: int = 0,
    ):
        self.data, self.known, self.test_m = data, known, test_m
        self.max_users, self.seed = max_users, seed
        self.skipped: dict[str, str] = {}
        profile = interactions(data, known)
        self.baselines: dict[str, Scorer] = {"most-popular": MostPopular(train_m)}
        if split.protocol == "cold-users":
            self.exclude = sp.csr_matrix(test_m.shape, dtype=np.float32)
            return
        self.exclude = profile
        self.baselines["itemknn"] = ItemKNN(train_m, profile)
        if data.n_items <= EASE_MAX_ITEMS:
            self.baselines["ease"] = EASE(train_m, profile)
        else:
            self.skipped["ease"] = (
                f"{data.n_items} items > {EASE_MAX_ITEMS}: EASE inverts a dense items x items "
                "matrix"
            )
            log.info("baseline ease skipped: %s", self.skipped["ease"])

    def results(
        self, model: TwoTower, device: torch.device | str = "cpu"
    ) -> dict[str, dict[str, float]]:
        """Test metrics of ``model`` (latest histories from the known rows) and every baseline."""
        spec = model.user_tower.spec, model.item_tower.spec
        inputs = Inputs(self.data, Histories.build(self.data, self.known), *spec, device)
        truth, exclude, sample = self.test_m, self.exclude, (self.max_users, self.seed)
        out = {"two-tower": model_metrics(model, inputs, truth, exclude, *sample)}
        for name, scorer in self.baselines.items():
            out[name] = evaluate(scorer, truth, exclude, max_users=sample[0], seed=sample[1])
        return out
