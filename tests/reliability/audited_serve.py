"""`recall serve` with a Python audit hook that writes every path the process opens.

    AUDIT_LOG=/tmp/opened.txt python tests/reliability/audited_serve.py serve --snapshots ...

Used by the admin test to show that a version like ``../x`` never reaches the file system.
Records the ``open``, ``os.listdir`` and ``os.scandir`` audit events, one path per line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

EVENTS = {"open", "os.listdir", "os.scandir"}


def main() -> int:
    log = open(os.environ["AUDIT_LOG"], "a", buffering=1)  # noqa: SIM115 (open for the process)

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in EVENTS and args and isinstance(args[0], str | bytes | os.PathLike):
            path = os.fsdecode(args[0])
            log.write(f"{path}\n")

    sys.addaudithook(hook)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from recall.cli import main as recall

    return int(recall(sys.argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
