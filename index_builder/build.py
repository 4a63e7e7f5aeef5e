"""The batch rebuild: model artifact -> item vectors -> tuned index -> published snapshot."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import torch

from index_builder.catalogue import (
    Catalogue,
    embed_items,
    item_table,
    load_catalogue,
    sampled_users,
    user_table,
)
from index_builder.gates import PUBLISH_GATES, ann_gate, parity_sample, quality_gate
from index_builder.indexes import HNSW_EF_CONSTRUCTION, IndexPlan, build_index, choose_index
from index_builder.manifest import (
    ARTIFACT_FILES,
    FORMAT_VERSION,
    INDEX,
    METRIC,
    new_version,
    write_manifest,
)
from index_builder.store import prune, publish, staging
from index_builder.tables import write_items, write_users
from index_builder.tuning import Tuning, measure_latency, tune
from models.artifact import Artifact, load_artifact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    """Knobs of one build (see ``recall build-index --help``)."""

    index: str = "auto"  # auto | flat | hnsw | ivf-flat | ivf-pq
    target_recall: float = 0.95  # recall@k against exact search that tuning must reach
    k: int = 100
    keep: int = 5  # valid snapshots kept after publishing
    memory_budget_gb: float = 8.0  # RAM the index may take when served
    batch_size: int = 8192  # items per item-tower batch
    tuning_users: int = 1000  # real users whose vectors are the tuning/latency queries
    seed: int = 0
    data_dir: Path | None = None  # overrides the artifact's data_dir
    threads: int = 0  # torch and faiss threads for the build; 0 keeps their defaults
    hnsw_ef_construction: int = HNSW_EF_CONSTRUCTION  # HNSW graph quality (build time grows)
    progress: bool = True
    allow: tuple[str, ...] = ()  # publish gates to let pass (index_builder.gates), recorded

    def __post_init__(self) -> None:
        if not 0.0 < self.target_recall <= 1.0:
            raise ValueError(f"target_recall must be in (0, 1], got {self.target_recall}")
        if self.threads < 0:
            raise ValueError(f"threads must be 0 (default) or positive, got {self.threads}")
        for name in ("k", "keep", "batch_size", "tuning_users", "hnsw_ef_construction"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        unknown = set(self.allow) - set(PUBLISH_GATES)
        if unknown:
            raise ValueError(f"allow: {sorted(unknown)} are not publish gates {PUBLISH_GATES}")
        if self.memory_budget_gb <= 0:
            raise ValueError(f"memory_budget_gb must be positive, got {self.memory_budget_gb}")


def write_artifact_files(folder: Path, artifact_path: Path) -> None:
    """Copy the user tower, feature spec and the rest of the artifact (loads unchanged)."""
    for name in ARTIFACT_FILES:
        shutil.copyfile(artifact_path / name, folder / name)


def build_snapshot(
    artifact_path: Path, snapshots_root: Path, options: BuildOptions | None = None
) -> str:
    """Build, verify-tune and publish a snapshot of ``artifact_path``; returns its version."""
    options = options or BuildOptions()
    artifact_path, root = Path(artifact_path), Path(snapshots_root)
    if options.threads:
        torch.set_num_threads(options.threads)
        faiss.omp_set_num_threads(options.threads)
    artifact = load_artifact(artifact_path)
    catalogue = load_catalogue(artifact, options.data_dir)
    item_vectors = embed_items(
        artifact.model, catalogue.data.item_features, options.batch_size, options.progress
    )
    n, dim = item_vectors.shape
    budget = int(options.memory_budget_gb * 2**30)
    plan = choose_index(n, dim, options.index, budget)
    log.info("index %s (%s): %s", plan.kind, plan.factory, plan.reason)
    index = build_index(
        plan, item_vectors, options.seed, options.progress, options.hnsw_ef_construction
    )
    sampled, queries = sampled_users(artifact, catalogue, options.tuning_users, options.seed)
    tuning = tune(index, plan, item_vectors, queries, options.k, options.target_recall)
    latency = measure_latency(index, queries, options.k)
    log.info(
        "recall@%d %.4f with %s; p50 %.3f ms p99 %.3f ms (1 thread)",
        tuning.k,
        tuning.recall,
        tuning.params,
        latency["p50"],
        latency["p99"],
    )
    version = new_version()
    manifest = _manifest(
        version, artifact_path, artifact, catalogue, plan, tuning, latency, options
    )
    manifest["dim"] = dim  # what the item tower produced; load checks it against the config
    manifest["index"]["memory_budget_bytes"] = budget
    manifest["overrides"] = sorted(set(options.allow))
    with staging(root, version) as tmp:
        write_artifact_files(tmp, artifact_path)
        faiss.write_index(index, str(tmp / INDEX))
        write_items(tmp, item_table(artifact, catalogue))
        write_users(tmp, user_table(catalogue))
        parity_sample(tmp, sampled, queries, options.seed)
        written = write_manifest(tmp, manifest)
        ann_gate(written)  # refused: the staging folder goes, nothing is published
        quality_gate(written)
        publish(tmp, root, version)
        prune(root, options.keep, protect=version)
    return version


def _manifest(
    version: str,
    artifact_path: Path,
    artifact: Artifact,
    catalogue: Catalogue,
    plan: IndexPlan,
    tuning: Tuning,
    latency: dict[str, float],
    options: BuildOptions,
) -> dict[str, Any]:
    """Everything but ``dim``, the budget and ``files`` (layout: index_builder.manifest)."""
    return {
        "format_version": FORMAT_VERSION,
        "version": version,
        "created": datetime.now(UTC).isoformat(),
        "source": {
            "artifact": str(artifact_path.resolve()),
            "artifact_fingerprint": artifact.fingerprint,
            "dataset": artifact.config.dataset,
            "data_dir": str(catalogue.data_dir),
            "data_fingerprint": catalogue.data_fingerprint,
            "data_changed_since_training": catalogue.data_changed,
            "split": artifact.data.get("split", {}),
        },
        "metric": METRIC,
        "counts": {
            "items": catalogue.data.n_items,
            "users": catalogue.data.n_users,
            "seen_interactions": len(catalogue.known_rows),
        },
        "index": {
            "type": plan.kind,
            "factory": plan.factory,
            "reason": plan.reason,
            "params": tuning.params,
            "build_params": (
                {"efConstruction": options.hnsw_ef_construction} if plan.kind == "hnsw" else {}
            ),
            "nlist": plan.nlist,
            "refine": plan.refine,
            "estimated_bytes": plan.estimated_bytes,
        },
        "tuning": tuning.to_dict(),
        "latency_ms": latency,
        "offline_metrics": artifact.metrics,
    }
