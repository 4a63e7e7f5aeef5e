"""`recall data ...` and `recall train`: the training program's commands."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction) -> None:
    """Add the data and train subcommands to the `recall` parser."""
    data = commands.add_parser("data", help="fetch real data or write synthetic data")
    data_cmds = data.add_subparsers(dest="data_command", required=True)
    fetch = data_cmds.add_parser("fetch", help="put MovieLens-100K under DIR/ml-100k")
    fetch.add_argument("--dataset", default="ml-100k", choices=["ml-100k"])
    fetch.add_argument("--dir", type=Path, default=Path("data"))
    fetch.set_defaults(func=_fetch)
    synth = data_cmds.add_parser("synth", help="write a synthetic dataset in the atomic format")
    synth.add_argument("--users", type=int, required=True)
    synth.add_argument("--items", type=int, required=True)
    synth.add_argument("--interactions", type=int, required=True)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", type=Path, required=True)
    synth.set_defaults(func=_synth)

    train = commands.add_parser("train", help="train a two-tower model and evaluate it")
    train.add_argument("--config", type=Path, required=True, help="e.g. configs/ml-100k.toml")
    train.add_argument(
        "--split", default="leave-last-out", choices=["leave-last-out", "random-811", "cold-users"]
    )
    train.add_argument(
        "--loss", choices=["pointwise", "pairwise-hinge", "pairwise-logistic", "listwise"]
    )
    train.add_argument("--seed", type=int)
    train.add_argument("--epochs", type=int)
    train.add_argument(
        "--teacher", choices=["none", "ease"], help="distillation teacher (overrides the config)"
    )
    train.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help="where to train (default: the config's)"
    )
    train.add_argument(
        "--eval-users",
        type=int,
        help="users scored by validation and test (0 = all; a sample past it)",
    )
    train.add_argument("--out", type=Path, required=True, help="artifact folder to write")
    train.add_argument("--data-dir", type=Path, help="overrides the config's dataset dir")
    train.add_argument("--init-from", type=Path, help="warm-start from an earlier artifact")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(func=_train)


def _fetch(args: argparse.Namespace) -> int:
    from models.fetch import fetch_movielens_100k

    path = fetch_movielens_100k(args.dir)
    print(f"ml-100k ready in {path}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from models.synth import write_synthetic

    path = write_synthetic(args.out, args.users, args.items, args.interactions, seed=args.seed)
    print(f"synthetic dataset written to {path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from models.config import load_config
    from models.experiment import format_table, run_training

    config = (
        load_config(args.config)
        .for_split(args.split)
        .with_train(
            loss=args.loss,
            seed=args.seed,
            epochs=args.epochs,
            teacher=args.teacher,
            device=args.device,
            eval_users=args.eval_users,
        )
    )
    try:
        config.train.torch_device()
    except ValueError as exc:
        print(f"recall train: {exc}", file=sys.stderr)
        return 2
    artifact = run_training(
        config,
        args.split,
        args.out,
        data_dir=args.data_dir,
        init_from=args.init_from,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    if not artifact.metrics:  # another rank of a torchrun job: rank 0 reports and saves
        return 0
    print(f"\n{config.dataset} {args.split} loss={config.train.loss} seed={config.train.seed}")
    print(format_table(artifact.metrics["test"]))
    seconds = artifact.metrics["seconds"]
    training = seconds["search"] + seconds.get("refit", 0.0)
    print(
        f"training {training:.0f} s ({artifact.metrics['best_epoch']} epochs kept; search "
        f"{seconds['search']:.0f} s, refit {seconds.get('refit', 0):.0f} s), "
        f"evaluation {seconds['evaluation']:.0f} s"
    )
    print(f"artifact: {args.out}")
    return 0
