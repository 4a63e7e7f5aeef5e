"""`recall build-index` and `recall snapshot list|show|verify`: the index builder's commands.

Exit codes: 0 success; 1 the build or check failed (message on stderr names what and why);
2 bad arguments; 3 the snapshot was published but ``--notify`` failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)
NOTIFY_FAILED = 3


def register(commands: argparse._SubParsersAction) -> None:
    """Add the build-index and snapshot subcommands to the `recall` parser."""
    build = commands.add_parser(
        "build-index", help="embed the catalogue, build and publish a snapshot"
    )
    build.add_argument(
        "--artifact", type=Path, required=True, help="e.g. artifacts/ml-100k-listwise"
    )
    build.add_argument("--snapshots", type=Path, default=Path("snapshots"))
    build.add_argument(
        "--index", default="auto", choices=["auto", "flat", "hnsw", "ivf-flat", "ivf-pq"]
    )
    build.add_argument("--target-recall", type=float, default=0.95, help="ANN recall@k vs exact")
    build.add_argument("--k", type=int, default=100, help="K the recall target applies to")
    build.add_argument("--keep", type=int, default=5, help="valid snapshots to keep")
    build.add_argument(
        "--notify", metavar="URL", help="POST the version to the service's /admin/reload"
    )
    build.add_argument("--memory-budget-gb", type=float, default=8.0, help="RAM the index may use")
    build.add_argument("--batch-size", type=int, default=8192, help="items per item-tower batch")
    build.add_argument("--tuning-users", type=int, default=1000, help="users whose vectors tune")
    build.add_argument("--data-dir", type=Path, help="overrides the artifact's dataset dir")
    build.add_argument("--threads", type=int, default=0, help="torch/faiss threads (0: all)")
    build.add_argument(
        "--hnsw-ef-construction", type=int, default=64, help="HNSW build quality (hnsw only)"
    )
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--no-progress", action="store_true")
    build.add_argument(
        "--allow-below-target",
        action="store_true",
        help="publish although ANN recall missed --target-recall (recorded in the manifest)",
    )
    build.add_argument(
        "--allow-below-baseline",
        action="store_true",
        help="publish although the model scored below most-popular (recorded in the manifest)",
    )
    build.set_defaults(func=_build)

    snapshot = commands.add_parser("snapshot", help="list, show or verify snapshots")
    actions = snapshot.add_subparsers(dest="snapshot_command", required=True)
    for name, text in (
        ("list", "versions with their status"),
        ("show", "print the manifest"),
        ("verify", "check every file's size and sha256"),
    ):
        action = actions.add_parser(name, help=text)
        if name != "list":
            action.add_argument("version")
        action.add_argument("--snapshots", type=Path, default=Path("snapshots"))
        action.set_defaults(func={"list": _list, "show": _show, "verify": _verify}[name])


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _build(args: argparse.Namespace) -> int:
    # OpenMP threads that spin while waiting make faiss's many small k-means runs (PQ
    # training) ~10x slower when other processes share the cores; read when faiss loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from index_builder.build import BuildOptions, build_snapshot
    from index_builder.manifest import Check, SnapshotError, read_manifest
    from index_builder.notify import ReloadNotifyError, notify_reload
    from models.artifact import ArtifactInvalidError

    token = os.environ.get("RECALL_ADMIN_TOKEN", "")
    if args.notify and not token:
        return _fail("--notify needs RECALL_ADMIN_TOKEN set to the service's admin token", 2)
    try:
        options = BuildOptions(
            index=args.index,
            target_recall=args.target_recall,
            k=args.k,
            keep=args.keep,
            memory_budget_gb=args.memory_budget_gb,
            batch_size=args.batch_size,
            tuning_users=args.tuning_users,
            threads=args.threads,
            hnsw_ef_construction=args.hnsw_ef_construction,
            seed=args.seed,
            data_dir=args.data_dir,
            progress=not args.no_progress and sys.stderr.isatty(),
            allow=tuple(
                gate
                for gate, asked in (
                    (Check.ANN_RECALL, args.allow_below_target),
                    (Check.BELOW_BASELINE, args.allow_below_baseline),
                )
                if asked
            ),
        )
    except ValueError as exc:
        return _fail(str(exc), 2)
    try:
        version = build_snapshot(args.artifact, args.snapshots, options)
    except SnapshotError as exc:
        return _fail(f"build failed ({exc.code}): {exc}")
    except (ArtifactInvalidError, FileNotFoundError, ValueError) as exc:
        return _fail(f"build failed: {exc}")
    manifest = read_manifest(args.snapshots / version)
    index, tuning = manifest.index, manifest.tuning
    print(
        f"published snapshot {version} in {args.snapshots}: {index.type} {index.params} "
        f"recall@{tuning['k']} {tuning['recall']:.4f} p50 {manifest.latency_ms['p50']:.3f} ms"
    )
    if manifest.overrides:
        print(f"warning: published past the gates {manifest.overrides}", file=sys.stderr)
    if args.notify:
        try:
            notify_reload(args.notify, version, token)
        except ReloadNotifyError as exc:
            log.error("reload notify failed: %s", exc)
            return _fail(
                f"snapshot {version} is published, but the reload notify failed: {exc}",
                NOTIFY_FAILED,
            )
        print(f"service reloaded {version}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from index_builder.store import list_snapshots

    statuses = list_snapshots(args.snapshots)
    if not statuses:
        print(f"no snapshots in {args.snapshots}")
        return 0
    print(f"{'version':27} {'status':10} {'items':>10} {'index':9} {'recall':>7}  problem")
    for s in statuses:
        manifest = s.manifest
        items = manifest.counts.items if manifest else "-"
        kind = manifest.index.type if manifest else "-"
        recall = manifest.tuning.get("recall") if manifest else None
        recall_text = f"{recall:.4f}" if isinstance(recall, float) else "-"
        problem = s.problem or ""
        print(f"{s.version:27} {s.status:10} {items!s:>10} {kind:9} {recall_text:>7}  {problem}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from index_builder.manifest import SnapshotError, check_version, read_manifest

    try:
        path = args.snapshots / check_version(args.version)
        if not path.is_dir():
            return _fail(f"{path}: no such snapshot [not_found]")
        manifest = read_manifest(path)
    except SnapshotError as exc:
        return _fail(f"{exc} [{exc.code}]")
    print(json.dumps(manifest.to_json(), indent=2, sort_keys=True))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from index_builder.manifest import SnapshotError, check_version, verify_snapshot

    try:
        path = args.snapshots / check_version(args.version)
        if not path.is_dir():
            return _fail(f"{path}: no such snapshot [not_found]")
        manifest = verify_snapshot(path)
    except SnapshotError as exc:
        return _fail(f"{exc} [{exc.code}]")
    print(f"{args.version}: valid ({len(manifest.files)} files checked)")
    return 0
