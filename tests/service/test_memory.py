"""A replaced engine is freed by reference counting alone: the app freezes its start-up
objects out of the cycle collector's reach (service/app.py), so a cycle would leak a whole
snapshot per reload."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from service.holder import SnapshotHolder
from service.metrics import Metrics
from service.schemas import RecallRequest


def test_a_replaced_engine_is_freed_without_the_cycle_collector(
    snapshots: tuple[Path, list[str]],
) -> None:
    root, (older, newer) = snapshots
    holder = SnapshotHolder(root, Metrics())
    holder.load_newest()
    first = holder.require()
    first.item_filter({"genres": ["Comedy"]})  # fills the engine's caches
    first.embed([first.resolve(RecallRequest(user_id="1"))])
    gone = weakref.ref(first)
    del first
    gc.collect()
    gc.disable()
    try:
        holder.reload(older)  # the first engine becomes previous ...
        holder.reload(newer)  # ... and is dropped here: a new engine serves newer
        assert gone() is None
    finally:
        gc.enable()
