"""Promotion gates: what a snapshot must show before it is published, and again before a swap.

Each gate refuses with its own ``Check`` code (the service answers 409, the old snapshot keeps
serving):

- ``ann_recall_below_target``: the tuner did not reach the recall target against exact search;
- ``quality_below_baseline``: the model's offline ``QUALITY_METRIC`` (the artifact's test
  metrics, in the manifest) is below the most-popular baseline scored on the same split;
- ``quality_regression``: at reload only, below the serving snapshot's by more than a margin
  (same dataset and split protocol; other snapshots are not comparable);
- ``parity_mismatch`` and ``golden_queries_failed``: at reload only, from the service's own
  online path (``service.promotion``), over the users sampled here (``parity_sample``).

``recall build-index --allow-below-target`` / ``--allow-below-baseline`` publish anyway; the
manifest's ``overrides`` records it, and the reload honours what the builder was told.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from index_builder.manifest import Check, Manifest, SnapshotInvalidError
from index_builder.tables import write_parity

QUALITY_METRIC = "recall@10"
MODEL, BASELINE = "two-tower", "most-popular"  # rows of the test metrics (models.scoreboard)
PARITY_USERS = 64  # sampled known users whose offline vectors the snapshot carries
PUBLISH_GATES = (Check.ANN_RECALL, Check.BELOW_BASELINE)


def ann_gate(manifest: Manifest) -> None:
    """``ann_recall_below_target`` unless the tuner reached its target (or it was overridden)."""
    tuning = manifest.tuning
    if tuning.get("target_reached", True) or Check.ANN_RECALL in manifest.overrides:
        return
    raise SnapshotInvalidError(
        f"snapshot {manifest.version}: ANN recall@{tuning.get('k')} {tuning.get('recall', 0):.4f} "
        f"at the tuned parameters is below the target {tuning.get('target_recall')}; rebuild "
        "with another index or budget, or publish with --allow-below-target",
        Check.ANN_RECALL,
    )


def quality(manifest: Manifest, row: str = MODEL) -> float | None:
    """The snapshot's offline ``QUALITY_METRIC`` of ``row`` (None when not recorded)."""
    test: Any = manifest.offline_metrics.get("test", {})
    value = test.get(row, {}).get(QUALITY_METRIC) if isinstance(test, dict) else None
    return float(value) if isinstance(value, int | float) else None


def quality_gate(manifest: Manifest, serving: Manifest | None = None, margin: float = 0.1) -> None:
    """``quality_below_baseline`` when the model scored below its own most-popular baseline;
    ``quality_regression`` when below ``(1 - margin)`` x the serving snapshot's, where the
    two were scored on the same dataset and split protocol."""
    model, baseline = quality(manifest), quality(manifest, BASELINE)
    if model is None:
        return  # an artifact without test metrics (none were computed): nothing to compare
    metric = QUALITY_METRIC
    if baseline is not None and model < baseline and Check.BELOW_BASELINE not in manifest.overrides:
        raise SnapshotInvalidError(
            f"snapshot {manifest.version}: offline {metric} {model:.4f} is below the "
            f"most-popular baseline's {baseline:.4f} on the same split; retrain, or publish "
            "with --allow-below-baseline",
            Check.BELOW_BASELINE,
        )
    if serving is None or _protocol(serving) != _protocol(manifest):
        return
    served = quality(serving)
    if served is not None and model < (1 - margin) * served:
        raise SnapshotInvalidError(
            f"snapshot {manifest.version}: offline {metric} {model:.4f} is more than "
            f"{margin:.0%} below the serving snapshot {serving.version}'s {served:.4f}; "
            "reload it by version after a look, with RECALL_GATES__QUALITY_MARGIN raised",
            Check.REGRESSION,
        )


def _protocol(manifest: Manifest) -> tuple[Any, Any]:
    split: Any = manifest.source.get("split", {})
    return manifest.source.get("dataset"), split.get("protocol") if isinstance(
        split, dict
    ) else None


def parity_sample(folder: Path, users: np.ndarray, vectors: np.ndarray, seed: int = 0) -> None:
    """Write up to ``PARITY_USERS`` of ``users`` (rows of the user table; seeded sample) with
    their offline vectors (``index_builder.tables.write_parity``), for the reload's parity and
    golden-query gates."""
    if len(users) > PARITY_USERS:
        keep = np.sort(np.random.default_rng(seed).choice(len(users), PARITY_USERS, replace=False))
        users, vectors = users[keep], vectors[keep]
    write_parity(folder, users, vectors)
