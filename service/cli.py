"""`recall serve`: run the online service with uvicorn, one worker per process."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction) -> None:
    """Add the serve subcommand to the `recall` parser."""
    serve = commands.add_parser(
        "serve", help="serve /v1/recall over HTTP (settings: RECALL_* env, see .env.example)"
    )
    serve.add_argument("--snapshots", type=Path, help="snapshots folder (RECALL_SNAPSHOTS)")
    serve.add_argument("--host", help="bind address (RECALL_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (RECALL_PORT, default 8000)")
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.protocol import connection_cap, guarded_protocol, raise_file_limit
    from service.server import DrainingServer
    from service.settings import SettingsInvalidError, load_settings

    flags = {"snapshots": args.snapshots, "host": args.host, "port": args.port}
    try:
        settings = load_settings(**{k: v for k, v in flags.items() if v is not None})
    except SettingsInvalidError as exc:
        print(f"recall serve: {exc}", file=sys.stderr)
        return 2
    log.info("serving %s on http://%s:%d", settings.snapshots, settings.host, settings.port)
    # uvicorn re-raises the signal that stopped it once its graceful shutdown is over, with the
    # handler it found restored: a no-op one makes a SIGTERM'd server exit 0 after answering
    # what was in flight, as a finished job should (SIGINT keeps Python's KeyboardInterrupt).
    previous = signal.signal(signal.SIGTERM, _stopped)
    cap = connection_cap(settings.connections, raise_file_limit())
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        workers=1,
        loop="uvloop",  # both pinned; measured ahead of asyncio and h11 (bench/load.py)
        http=guarded_protocol(settings.connections, cap),  # httptools, with limits
        timeout_keep_alive=settings.connections.keep_alive_s,  # type: ignore[arg-type]
        log_config=None,  # keep the logging the `recall` entry point configured
        access_log=False,  # the service logs one line per request itself (debug)
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    try:
        DrainingServer(config, settings.shutdown_drain_ms / 1000).run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _stopped(signum: int, frame: object) -> None:
    log.info("stopped by signal %d after a graceful shutdown", signum)
