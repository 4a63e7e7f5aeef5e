"""`recall` command line: each program registers its own subcommands here."""

from __future__ import annotations

import argparse
import importlib
import os

from recall.logs import configure

# Programs that contribute subcommands; a missing one is skipped so each can ship alone.
PROGRAMS = ("models.cli", "index_builder.cli", "service.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recall", description="Two-tower recall: train, build index snapshots, serve."
    )
    parser.add_argument("--log-level", default=os.environ.get("RECALL_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in PROGRAMS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args.log_level)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
