"""The promotion gates a snapshot passes before it is swapped in (``SnapshotHolder._load``).

The manifest's gates come from ``index_builder.gates`` (ANN recall at the tuned parameters,
offline quality against most-popular and against the serving snapshot). The other two run the
snapshot's sampled users (``LoadedSnapshot.parity``: ids and the vectors the build computed
offline) through the service's own online path:

- **parity**: each user's vector as a request computes it (``RecallEngine.resolve`` and
  ``embed``: the snapshot's profile and history, the frozen user tower) against the offline
  one; ``parity_mismatch`` when any cosine is below ``1 - parity_tolerance``;
- **golden queries**: the same users' vectors searched in the index (``RecallEngine.search``,
  nothing excluded): every answer must be non-empty with finite scores, and the users must not
  all get the same top-``golden_k`` list (a model that answers everyone alike fails; a weak
  one whose lists overlap passes); ``golden_queries_failed``.
"""

from __future__ import annotations

import logging

import numpy as np

from index_builder.snapshot import Check, SnapshotInvalidError, ann_gate, quality_gate
from service.engine import Candidates, RecallEngine
from service.schemas import RecallRequest
from service.settings import GateSettings

log = logging.getLogger(__name__)


def check_gates(engine: RecallEngine, serving: RecallEngine | None, settings: GateSettings) -> None:
    """Raise SnapshotInvalidError (a gate's ``Check`` code) when ``engine`` fails a gate."""
    snapshot = engine.snapshot
    ann_gate(snapshot.manifest)
    quality_gate(
        snapshot.manifest, serving.snapshot.manifest if serving else None, settings.quality_margin
    )
    if snapshot.parity is None:
        log.warning("snapshot %s has no parity sample: parity and golden gates skipped",
                    snapshot.version)  # fmt: skip
        return
    user_ids, offline = snapshot.parity
    if not len(user_ids):
        return
    k = min(settings.golden_k, engine.n_items)
    requests = [RecallRequest(user_id=str(user), k=k) for user in user_ids.tolist()]
    queries = [engine.resolve(request) for request in requests]
    online = engine.embed(queries)
    _parity(snapshot.version, user_ids, online, offline, settings.parity_tolerance)
    n = len(requests)
    nothing = [np.empty(0, dtype=np.int64)] * n
    answers = engine.search(online, [k] * n, nothing, [None] * n)
    _golden(snapshot.version, user_ids, answers, k)


def _parity(
    version: str, users: np.ndarray, online: np.ndarray, offline: np.ndarray, tolerance: float
) -> None:
    norms = np.linalg.norm(online, axis=1) * np.linalg.norm(offline, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosines = np.einsum("ij,ij->i", online.astype(np.float64), offline) / norms
    cosines = np.nan_to_num(cosines, nan=-1.0)
    worst = int(np.argmin(cosines))
    if 1.0 - cosines[worst] > tolerance:
        raise SnapshotInvalidError(
            f"snapshot {version}: user {users[worst]!r}'s vector computed online differs from "
            f"the build's (cosine {cosines[worst]:.6f}, {int((1 - cosines > tolerance).sum())} "
            f"of {len(users)} sampled users past 1 - {tolerance:g}): the user tower or user "
            "table does not match the vectors the index was built and checked with; rebuild",
            Check.PARITY,
        )


def _golden(version: str, users: np.ndarray, answers: list[Candidates], k: int) -> None:
    for user, found in zip(users.tolist(), answers, strict=True):
        problem = None
        if len(found.rows) == 0:
            problem = "an empty answer"
        elif not np.isfinite(found.scores).all():
            problem = "non-finite scores"
        if problem:
            raise SnapshotInvalidError(
                f"snapshot {version}: golden query of user {user!r} got {problem}; rebuild",
                Check.GOLDEN,
            )
    lists = {tuple(found.rows[:k].tolist()) for found in answers}
    if len(users) > 1 and len(lists) == 1:
        raise SnapshotInvalidError(
            f"snapshot {version}: all {len(users)} sampled users get the same top-{k}: the model "
            "answers users alike; rebuild",
            Check.GOLDEN,
        )
