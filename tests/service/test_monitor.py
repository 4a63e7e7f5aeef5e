"""Online ANN recall (service.monitor): an IVF searched at a deliberately low nprobe measures a
lower recall on real requests than an exact index, and the service exports it."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from index_builder.build import BuildOptions, build_snapshot
from index_builder.gates import PUBLISH_GATES
from index_builder.manifest import MANIFEST, seal_manifest
from index_builder.snapshot import load_snapshot
from models.experiment import run_training
from models.synth import write_synthetic
from service.engine import RecallEngine
from service.metrics import Metrics
from service.monitor import AnnMonitor, exact_search
from service.schemas import RecallRequest
from service.settings import MonitorSettings
from tests.service.fixtures import DATASET, tiny_config
from tests.service.test_admin import app_client


@pytest.fixture(scope="module")
def low_nprobe(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An IVF-Flat snapshot of 2,000 items (32 lists) served at nprobe 1, its manifest edited
    after the build as an operator's mistake would."""
    base = tmp_path_factory.mktemp("ivf")
    data_dir = write_synthetic(base / DATASET, users=200, items=2000, interactions=6000,
                               seed=0, clusters=8, progress=False)  # fmt: skip
    run_training(tiny_config(data_dir), "leave-last-out", base / "artifact", data_dir=data_dir,
                 progress=False)  # fmt: skip
    root = base / "snapshots"
    options = BuildOptions(index="ivf-flat", k=10, tuning_users=50, progress=False,
                           allow=PUBLISH_GATES)  # its quality is not the point  # fmt: skip
    version = build_snapshot(base / "artifact", root, options)
    path = root / version / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["index"]["params"] = {"nprobe": 1}
    path.write_text(json.dumps(seal_manifest(manifest)))
    return root, version


def online_recall(engine: RecallEngine, users: list[str]) -> float:
    monitor = AnnMonitor(MonitorSettings(sample=1.0, k=10), Metrics())
    vectors = engine.embed([engine.resolve(RecallRequest(user_id=u)) for u in users])
    monitor.measure([(engine, v) for v in vectors])
    recall = monitor.measured[engine.version].recall
    assert recall is not None and monitor.measured[engine.version].samples == len(users)
    return recall


def test_a_low_nprobe_measures_below_an_exact_index(
    snapshots: tuple[Path, list[str]], low_nprobe: tuple[Path, str]
) -> None:
    flat = RecallEngine(load_snapshot(snapshots[0], snapshots[1][-1]))
    ivf = RecallEngine(load_snapshot(*low_nprobe))
    users = [str(u) for u in list(flat.snapshot.user_row)[:40]]
    assert online_recall(flat, users) == 1.0
    assert online_recall(ivf, users) < 0.9


def test_exact_search_of_an_ivf_is_brute_force(low_nprobe: tuple[Path, str]) -> None:
    snapshot = load_snapshot(*low_nprobe)  # owns the index
    ivf = faiss.downcast_index(snapshot.index)
    ivf.make_direct_map()
    items = np.stack([ivf.reconstruct(i) for i in range(ivf.ntotal)])
    queries = np.random.default_rng(0).normal(size=(8, ivf.d)).astype("float32")
    _, exact = faiss.knn(queries, items, 10, metric=faiss.METRIC_INNER_PRODUCT)
    assert (exact_search(ivf, queries, 10) == exact).all()
    assert not (ivf.search(queries, 10)[1] == exact).all()  # nprobe 1 misses some


def test_the_service_exports_the_online_recall(low_nprobe: tuple[Path, str]) -> None:
    root, version = low_nprobe
    monitor = {"sample": 1.0, "k": 10, "cpu_share": 1.0, "min_samples": 20}
    users = [str(u) for u in list(load_snapshot(root, version).user_row)[:40]]  # known users
    with app_client(root, monitor=monitor) as client:
        for user in users:
            assert client.post("/v1/recall", json={"user_id": user, "k": 5}).status_code == 200
        client.state["services"].recaller.monitor.join()  # the monitor's thread measured them
        line = f'recall_ann_recall_samples_total{{snapshot="{version}"}} 40.0'
        assert line in client.get("/metrics").text
        text = client.get("/metrics").text
        value = float(text.split(f'recall_ann_recall{{snapshot="{version}"}} ')[1].split()[0])
        assert 0.0 < value < 0.9
        warnings = client.get("/readyz").json()["warnings"]
        assert "online ANN recall@10" in warnings[0]
