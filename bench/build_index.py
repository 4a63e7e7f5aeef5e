"""Index build benchmark: embed a synthetic catalogue with a real item tower, build, tune, time.

    .venv/bin/python bench/build_index.py --sizes 100k,1m [--kinds auto,ivf-flat] [--work DIR]

A small two-tower model (dim 64) is trained for one epoch on a ``write_synthetic`` dataset
(cached in ``--work``). Each catalogue of N items is a set of encoded feature rows pushed
through that model's item tower: item-id tokens drawn from the trained vocabulary, genre rows
drawn from the dataset's items, and release years drawn from the dataset with Gaussian jitter
(so vectors are distinct). Queries are real user vectors: up to 1000 users of the dataset, with
their latest histories and profile features through the user tower.

Every (size, kind) row runs in its own subprocess so its peak RSS is its own. Latencies are
per query on one thread (faiss.omp_set_num_threads(1)); "exact" rows time IndexFlatIP over the
same vectors, the baseline for the ANN rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

# Spinning OpenMP waits make faiss training ~10x slower on shared cores (see index_builder.cli);
# must be set before faiss and torch load their OpenMP runtimes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
K, TARGET = 100, 0.95
SIZES = {"100k": 100_000, "1m": 1_000_000, "10m": 10_000_000}


def train_artifact(work: Path) -> Path:
    """Train (once) a dim-64 model for one epoch on a synthetic dataset under ``work``."""
    from models.config import TrainConfig
    from models.experiment import run_training
    from models.synth import write_synthetic

    artifact = work / "artifact"
    # Retrain whenever the model code changed since the cached artifact was trained.
    source = hashlib.sha256(
        b"".join(p.read_bytes() for p in sorted((ROOT / "models").glob("*.py")))
    )
    key = work / "artifact.key"
    trained = (artifact / "model.safetensors").exists() and key.exists()
    if trained and key.read_text() == source.hexdigest():
        return artifact
    data_dir = write_synthetic(work / "bench", 4000, 4000, 100_000, seed=0, progress=False)
    raw = tomllib.loads((ROOT / "configs" / "ml-100k.toml").read_text())
    raw["dataset"] = {"name": "bench", "dir": str(data_dir)}
    raw["model"] = {"hidden": [128], "dim": 64}
    raw["train"] = {"epochs": 1, "batch_size": 1024}
    run_training(TrainConfig.from_dict(raw), "leave-last-out", artifact, progress=False)
    key.write_text(source.hexdigest())
    return artifact


def synthetic_features(artifact: Any, catalogue: Any, n: int, seed: int) -> dict[str, np.ndarray]:
    """Encoded item features for ``n`` synthetic items, in the item tower's input format."""
    rng = np.random.default_rng(seed)
    source = catalogue.data.item_features
    rows = rng.integers(0, catalogue.data.n_items, n)
    out: dict[str, np.ndarray] = {}
    for feature in artifact.item_spec.features:
        if feature.kind == "id":
            vocab = len(artifact.item_spec.vocabs[feature.name])
            out[feature.name] = rng.integers(1, vocab + 1, n, dtype=np.int64)
        elif feature.kind == "numeric":
            values = source[feature.name][rows]
            values[:, 0] += rng.normal(0.0, 0.1, n).astype(np.float32)
            out[feature.name] = values
        else:
            out[feature.name] = source[feature.name][rng.integers(0, catalogue.data.n_items, n)]
    return out


def peak_rss_gib() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, it does not carry over from the
    parent across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def one_row(artifact_path: Path, n: int, kind: str, budget_gb: float) -> dict[str, Any]:
    """Build one index over ``n`` items; returns the table row (and the exact baseline)."""
    from index_builder.catalogue import embed_items, load_catalogue, query_vectors
    from index_builder.indexes import build_index, choose_index
    from index_builder.tuning import measure_latency, tune
    from models.artifact import load_artifact

    artifact = load_artifact(artifact_path)
    catalogue = load_catalogue(artifact)
    queries = query_vectors(artifact, catalogue, 1000, seed=0)
    features = synthetic_features(artifact, catalogue, n, seed=1)
    start = time.perf_counter()
    item_vectors = embed_items(artifact.model, features, batch_size=8192)
    embed_s = time.perf_counter() - start
    del features
    plan = choose_index(n, item_vectors.shape[1], kind, int(budget_gb * 2**30))
    start = time.perf_counter()
    index = build_index(plan, item_vectors, seed=0)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    tuning = tune(index, plan, item_vectors, queries, K, TARGET)
    tune_s = time.perf_counter() - start
    latency = measure_latency(index, queries, K)
    with tempfile.TemporaryDirectory() as tmp:
        faiss.write_index(index, f"{tmp}/index.faiss")
        disk_mib = Path(f"{tmp}/index.faiss").stat().st_size / 2**20
    row = {
        "n": n,
        "index": plan.factory,
        "params": tuning.params,
        "embed_s": embed_s,
        "build_s": build_s,
        "tune_s": tune_s,
        "disk_mib": disk_mib,
        "recall": tuning.recall,
        **latency,
        "rss_gib": peak_rss_gib(),
    }
    del index
    exact = faiss.IndexFlatIP(item_vectors.shape[1])
    exact.add(item_vectors)
    baseline = measure_latency(exact, queries, K, max_seconds=10.0)
    row["exact"] = {
        "n": n,
        "index": "Flat (exact baseline)",
        "params": {},
        "recall": 1.0,
        **baseline,
    }
    return row


def fmt(row: dict[str, Any]) -> str:
    def num(key: str, spec: str) -> str:
        return format(row[key], spec) if key in row else "-"

    params = ",".join(f"{k}={v}" for k, v in row["params"].items()) or "-"
    return (
        f"{row['n']:>10,} {row['index']:28} {params:24} {num('embed_s', '8.1f')} "
        f"{num('build_s', '8.1f')} {num('tune_s', '7.1f')} {num('rss_gib', '7.2f')} "
        f"{num('disk_mib', '9.1f')} {row['recall']:8.4f} {row['p50']:8.3f} {row['p99']:8.3f} "
        f"{row['batch64_per_query']:9.3f}"
    )


HEADER = (
    f"{'items':>10} {'index':28} {'params':24} {'embed s':>8} {'build s':>8} {'tune s':>7} "
    f"{'RSS GiB':>7} {'disk MiB':>9} {'rec@100':>8} {'p50 ms':>8} {'p99 ms':>8} "
    f"{'b64 ms/q':>9}"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100k,1m,10m", help=f"comma list of {list(SIZES)}")
    parser.add_argument(
        "--kinds", default="auto", help="comma list: auto,flat,hnsw,ivf-flat,ivf-pq"
    )
    parser.add_argument("--memory-budget-gb", type=float, default=8.0)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "recall-bench")
    parser.add_argument("--artifact", type=Path, help="use this artifact instead of training")
    parser.add_argument("--row", nargs=2, metavar=("N", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.row:
        row = one_row(args.artifact, int(args.row[0]), args.row[1], args.memory_budget_gb)
        print("ROW " + json.dumps(row))
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    artifact = args.artifact or train_artifact(args.work)
    print(f"threads: faiss {faiss.omp_get_max_threads()}; latency columns: 1 thread, k={K}")
    print(HEADER)
    for size in args.sizes.split(","):
        for kind in args.kinds.split(","):
            command = [
                sys.executable,
                __file__,
                "--artifact",
                str(artifact),
                "--row",
                str(SIZES[size.lower()]),
                kind,
                "--memory-budget-gb",
                str(args.memory_budget_gb),
            ]
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
            row = json.loads(done.stdout.split("ROW ", 1)[1])
            print(fmt(row), flush=True)
        print(fmt(row["exact"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
