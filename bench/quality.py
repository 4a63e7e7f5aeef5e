"""Offline quality on MovieLens-100K: every protocol and loss, mean over seeds, as a Markdown table.

    .venv/bin/python bench/quality.py --seeds 0 1 2 --other-seeds 0 --out bench/results/quality

Each run is `recall train` (same code path); the table lists the two-tower model and the
baselines scored by the same evaluator on the same split, averaged over seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from models.config import load_config
from models.experiment import run_training

COLUMNS = ("recall@10", "ndcg@10", "hr@10", "hr@50", "recall@50", "mrr@10", "coverage@50")
PLAN = (  # (protocol, loss)
    ("random-811", "listwise"),
    ("leave-last-out", "listwise"),
    ("cold-users", "listwise"),
    ("random-811", "pointwise"),
    ("random-811", "pairwise-hinge"),
    ("random-811", "pairwise-logistic"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/ml-100k.toml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--other-seeds",
        type=int,
        nargs="+",
        help="seeds of the non-listwise losses (default: --seeds)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/quality"))
    parser.add_argument("--only", nargs="*", help="protocol:loss pairs to run (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    plan = [tuple(p.split(":")) for p in args.only] if args.only else list(PLAN)
    base = load_config(args.config)
    runs: dict[tuple[str, str], list[dict[str, dict[str, float]]]] = {}
    for protocol, loss in plan:
        seeds = args.seeds if loss == "listwise" or not args.other_seeds else args.other_seeds
        for seed in seeds:
            out = args.out / f"{protocol}-{loss}-{seed}"
            if not (out / "metrics.json").exists():
                started = time.perf_counter()
                config = base.for_split(protocol).with_train(loss=loss, seed=seed)
                run_training(config, protocol, out, progress=False)
                print(
                    f"{protocol} {loss} seed {seed}: {time.perf_counter() - started:.0f} s",
                    flush=True,
                )
            runs.setdefault((protocol, loss), []).append(
                json.loads((out / "metrics.json").read_text())["test"]
            )
    print(markdown(runs))


def markdown(runs: dict[tuple[str, str], list[dict[str, dict[str, float]]]]) -> str:
    """One row per (protocol, loss, method): mean over seeds of each column."""
    lines = [
        f"| protocol | loss | method | seeds | {' | '.join(COLUMNS)} |",
        "|" + "---|" * (4 + len(COLUMNS)),
    ]
    for (protocol, loss), results in runs.items():
        methods = ["two-tower"] + [m for m in results[0] if m != "two-tower"]
        if loss != "listwise":
            methods = ["two-tower"]  # baselines do not depend on the loss
        for method in methods:
            cells = []
            for column in COLUMNS:
                values = [r[method][column] for r in results]
                cells.append(f"{statistics.mean(values):.4f}")
            name = f"**{method}**" if method == "two-tower" else method
            row = f"| {protocol} | {loss} | {name} | {len(results)} | {' | '.join(cells)} |"
            lines.append(row)
    lines.append("\nMean over the seeds of each row; baselines from the same runs.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
