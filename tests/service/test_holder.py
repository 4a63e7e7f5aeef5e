"""SnapshotHolder: swaps are atomic and a request keeps the engine it started with."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from index_builder.snapshot import load_snapshot
from recall.cli import build_parser
from service.cache import LocalEmbeddingCache
from service.engine import ItemFilter, RecallEngine
from service.holder import SnapshotHolder
from service.metrics import Metrics
from service.recaller import Recaller
from service.schemas import RecallRequest
from service.settings import CacheSettings


def test_a_request_finishes_on_the_engine_it_started_with(
    snapshots: tuple[Path, list[str]],
) -> None:
    root, (older, newer) = snapshots
    holder = SnapshotHolder(root, Metrics())
    assert holder.load_newest() == newer
    recaller = Recaller(LocalEmbeddingCache(), Metrics(), CacheSettings())
    in_flight = holder.require()  # what a handler reads once at its start
    assert holder.reload(older).changed
    assert holder.require().version == older
    body = recaller.recall(in_flight, [RecallRequest(user_id="1", k=5)])[0]
    assert body["snapshot"] == newer and len(body["items"]) == 5


def test_concurrent_reloads_run_one_at_a_time(snapshots: tuple[Path, list[str]]) -> None:
    root, versions = snapshots
    holder = SnapshotHolder(root, Metrics())
    results = []
    threads = [
        threading.Thread(target=lambda v=v: results.append(holder.reload(v))) for v in versions * 2
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    assert holder.current is not None and holder.previous is not None
    assert {holder.current.version, holder.previous.version} == set(versions)
    # each swap saw the state the one before it left
    assert sum(r.changed for r in results) >= 2


def test_engine_search_doubles_the_fetch_until_k_items_survive(
    snapshots: tuple[Path, list[str]],
) -> None:
    root, (_, newer) = snapshots
    engine = RecallEngine(load_snapshot(root, newer), exact_filter_max=0)  # ANN path only
    vector = engine.embed([engine.resolve(RecallRequest(user_id="1"))])
    everything = engine.search(vector, [engine.n_items], [np.empty(0, np.int64)], [None])[0]
    best = everything.rows[:10]
    # exclude the 10 best: the first fetch (k + 10) is enough for an exact index
    found = engine.search(vector, [5], [best], [None])[0]
    assert found.rows.tolist() == everything.rows[10:15].tolist()
    # a filter that keeps only the 3 worst items forces doubling to the whole catalogue
    worst = everything.rows[-3:]
    mask = np.zeros(engine.n_items, dtype=bool)
    mask[worst] = True
    item_filter = ItemFilter(mask, np.flatnonzero(mask))
    found = engine.search(vector, [5], [np.empty(0, np.int64)], [item_filter])[0]
    assert found.rows.tolist() == worst.tolist()
    # the exact path over the filter's items agrees
    exact = RecallEngine(engine.snapshot).search(
        vector, [5], [np.empty(0, np.int64)], [item_filter]
    )
    assert exact[0].rows.tolist() == worst.tolist()
    assert np.allclose(exact[0].scores, found.scores, atol=1e-5)


def test_recall_serve_is_a_subcommand() -> None:
    args = build_parser().parse_args(["serve", "--snapshots", "snaps", "--port", "9000"])
    assert (str(args.snapshots), args.port, args.host) == ("snaps", 9000, None)
