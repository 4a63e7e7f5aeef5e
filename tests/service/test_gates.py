"""The reload's promotion gates: a snapshot that fails only one gate is refused with that gate's
409 code, and the snapshot serving before keeps serving."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from index_builder.manifest import MANIFEST, PARITY, new_version, seal_manifest
from index_builder.snapshot import load_snapshot
from index_builder.tables import write_parity
from service.engine import RecallEngine
from service.schemas import RecallRequest
from tests.index_builder.helpers import resum
from tests.service.test_admin import app_client, serving


def variant(root: Path, source: str, edit: Callable[[dict[str, Any]], None] | None = None) -> str:
    """A copy of ``source`` under a newer version, its manifest changed by ``edit``."""
    version = new_version(datetime.now(UTC) + timedelta(seconds=60))
    shutil.copytree(root / source, root / version)
    manifest = json.loads((root / version / MANIFEST).read_text())
    manifest["version"] = version
    if edit is not None:
        edit(manifest)
    (root / version / MANIFEST).write_text(json.dumps(seal_manifest(manifest)))
    return version


def scale_quality(manifest: dict[str, Any], model: float, baseline: float) -> None:
    test = manifest["offline_metrics"]["test"]
    test["two-tower"]["recall@10"] *= model
    test["most-popular"]["recall@10"] = test["two-tower"]["recall@10"] * baseline


def refused(
    root: Path, make: Callable[[], str], code: str, admin: dict[str, str], **settings: Any
) -> str:
    """Reload the snapshot ``make`` writes once the service serves the one before: 409
    ``code``, the old one still serving; returns the message."""
    with app_client(root, **settings) as client:
        before = serving(client)
        version = make()
        response = client.post("/admin/reload", json={"version": version}, headers=admin)
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == code
        assert serving(client) == before
        assert client.post("/v1/recall", json={"user_id": "u1", "k": 3}).status_code == 200
        return str(response.json()["error"]["message"])


@pytest.fixture()
def one(private: tuple[Path, list[str]]) -> tuple[Path, str]:
    """A snapshots folder holding one snapshot (the one served)."""
    root, (older, newer) = private
    shutil.rmtree(root / newer)
    return root, older


def test_the_fixture_snapshot_passes_every_gate(one: tuple[Path, str], admin: dict) -> None:
    root, served = one
    with app_client(root) as client:
        copy = variant(root, served)
        response = client.post("/admin/reload", json={"version": copy}, headers=admin)
        assert response.status_code == 200, response.text
        assert serving(client) == copy


def test_ann_recall_below_target_is_refused_unless_the_build_overrode_it(
    one: tuple[Path, str], admin: dict
) -> None:
    root, served = one

    def missed(manifest: dict[str, Any]) -> None:
        manifest["tuning"].update(target_reached=False, recall=0.5)

    refused(root, lambda: variant(root, served, missed), "ann_recall_below_target", admin)

    def overridden(manifest: dict[str, Any]) -> None:
        missed(manifest)
        manifest["overrides"] = ["ann_recall_below_target"]

    with app_client(root) as client:
        allowed = variant(root, served, overridden)  # after start-up, which serves the newest
        response = client.post("/admin/reload", json={"version": allowed}, headers=admin)
        assert response.status_code == 200, response.text


def test_a_model_below_its_most_popular_baseline_is_refused(
    one: tuple[Path, str], admin: dict
) -> None:
    root, served = one
    below = lambda: variant(root, served, lambda m: scale_quality(m, 1.0, 1.5))  # noqa: E731
    message = refused(root, below, "quality_below_baseline", admin)
    assert "most-popular" in message


def test_a_model_well_below_the_serving_one_is_refused(one: tuple[Path, str], admin: dict) -> None:
    root, served = one
    manifest = load_snapshot(root, served).manifest
    assert manifest.offline_metrics["test"]["two-tower"]["recall@10"] > 0
    versions: list[str] = []

    def halved() -> str:  # above its own baseline, half the serving one's
        versions.append(variant(root, served, lambda m: scale_quality(m, 0.5, 0.5)))
        return versions[-1]

    message = refused(root, halved, "quality_regression", admin)
    assert served in message
    shutil.rmtree(root / versions[0])
    # a margin wider than the drop lets it through
    with app_client(root, gates={"quality_margin": 0.6}) as client:
        response = client.post("/admin/reload", json={"version": halved()}, headers=admin)
        assert response.status_code == 200, response.text


def test_a_tampered_parity_vector_is_refused(one: tuple[Path, str], admin: dict) -> None:
    root, served = one

    def tampered() -> str:
        version = variant(root, served)
        tensors = load_file(str(root / version / PARITY))
        vectors = tensors["vectors"].copy()
        vectors[3] = -vectors[3]  # one sampled user's offline vector no longer matches
        write_parity(root / version, tensors["user_rows"], vectors)
        resum(root / version)
        return version

    message = refused(root, tampered, "parity_mismatch", admin)
    assert "1 of" in message


def test_a_user_tower_that_differs_from_the_item_vectors_is_refused(
    one: tuple[Path, str], admin: dict
) -> None:
    """The model file replaced after the build (same shapes, other weights): the service's
    vectors no longer match those the index was built and checked with."""
    root, served = one

    def retrained() -> str:
        version = variant(root, served)
        path = root / version / "model.safetensors"
        weights = load_file(str(path))
        rng = np.random.default_rng(0)
        for name, value in weights.items():
            if name.startswith("user_tower.mlp") and name.endswith("weight"):
                weights[name] = value + rng.normal(0, 0.5, value.shape).astype("f4")
        save_file(weights, str(path))
        resum(root / version)
        return version

    refused(root, retrained, "parity_mismatch", admin)


def test_a_model_that_answers_every_user_alike_fails_the_golden_queries(
    one: tuple[Path, str], admin: dict
) -> None:
    """User embeddings zeroed: one vector for everyone (its parity sample rewritten to match,
    so only the golden queries can tell)."""
    root, served = one

    def collapsed() -> str:
        version = variant(root, served)
        path = root / version / "model.safetensors"
        weights = load_file(str(path))
        for name, value in weights.items():
            if name.startswith("user_tower.embeddings"):
                weights[name] = np.zeros_like(value)
        save_file(weights, str(path))
        resum(root / version)
        snapshot = load_snapshot(root, version)
        assert snapshot.parity is not None
        user_ids, _ = snapshot.parity
        engine = RecallEngine(snapshot)
        online = engine.embed([engine.resolve(RecallRequest(user_id=str(u))) for u in user_ids])
        rows = np.array([snapshot.user_row[str(u)] for u in user_ids], dtype=np.int64)
        write_parity(root / version, rows, online)
        resum(root / version)
        return version

    message = refused(root, collapsed, "golden_queries_failed", admin)
    assert "same top-" in message
