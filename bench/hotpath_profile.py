"""Where the service's time goes: py-spy samples of `recall serve` under a fixed open-loop load.

    .venv/bin/python bench/hotpath_profile.py --mix cold --rate 800 --seconds 15 [--service naive]

Starts the service on the 1M-item snapshot of ``bench/big_snapshot.py`` (like ``bench/load.py``),
drives one mix at a fixed rate with ``bench/openloop.py`` and records the server with
``py-spy record --format raw`` (collapsed stacks; ``--native`` adds C frames). Prints the share
of the busy samples spent in each stage of the hot path (inclusive: a sample counts for every
stage on its stack, so shares can add to more than 100%), then the top functions by own time.
The raw stacks are kept in ``<work>/profile-<service>-<mix>.txt`` for a flame graph.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from big_snapshot import ensure  # noqa: E402
from load import HOST, Mixes, start_naive, start_ours  # noqa: E402
from openloop import run_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# stage -> substrings of a frame ("function (file)") that put a sample in that stage
STAGES: dict[str, tuple[str, ...]] = {
    "HTTP parse/write + event loop (uvicorn, uvloop)": ("uvicorn/protocols", "uvloop"),
    "request validation (pydantic)": ("pydantic", "validate_request", "model_validate"),
    "ASGI routing + middleware (starlette/fastapi)": ("starlette/", "fastapi/routing"),
    "cache lookups and writes (redis-py, local LRU)": (
        "redis/",
        "service/cache.py",
        "service/tiered.py",
    ),  # fmt: skip
    # not "service/users.py" as a whole: UserEncoder.embed also holds the tower forward
    "user features -> tensors": (
        "UserEncoder.resolve",
        "UserEncoder._encode_features",
        "UserEncoder.embed.<locals>",
        "models/features.py",
    ),
    "user tower forward (torch)": ("torch/", "models/towers.py", "models/two_tower.py"),
    "index search (FAISS)": ("faiss/",),
    # our own frames around the search; not "service/engine.py" as a whole, which also holds
    # RecallEngine.embed (the tower) and RecallEngine.search (FAISS)
    "exclusion, over-fetch and answer items": (
        "Recaller._excluded",
        "RecallEngine._keep",
        "RecallEngine._first_fetch",
        "RecallEngine.items",
        "_member (",
    ),
    "response JSON (orjson / fastapi jsonable_encoder)": (
        "orjson",
        "jsonable_encoder",
        "render (",
    ),  # fmt: skip
    "metrics (prometheus_client)": ("prometheus_client",),
}


def parse(path: Path) -> list[tuple[list[str], int]]:
    """Collapsed stacks: ``frame;frame;... count`` per line, outermost frame first."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def summarise(stacks: list[tuple[list[str], int]], top: int = 15) -> str:
    total = sum(count for _, count in stacks) or 1
    stage_counts: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, count in stacks:
        for stage, needles in STAGES.items():
            if any(needle in frame for frame in frames for needle in needles):
                stage_counts[stage] += count
        own[frames[-1]] += count
    lines = [f"{total} busy samples (py-spy leaves out idle ones)", "",
             "| stage (inclusive) | share of busy samples |", "|---|---|"]  # fmt: skip
    for stage, count in stage_counts.most_common():
        lines.append(f"| {stage} | {100 * count / total:.1f}% |")
    lines += ["", "| function (own time) | share |", "|---|---|"]
    for frame, count in own.most_common(top):
        lines.append(f"| `{frame[:110]}` | {100 * count / total:.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--service", choices=("ours", "naive"), default="ours")
    parser.add_argument("--mix", default="cold", choices=("warm", "cold", "features", "similar"))
    parser.add_argument("--rate", type=float, default=800)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--native", action="store_true", help="sample C frames too")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--stacks", type=Path, help="summarise this raw file; run nothing")
    args = parser.parse_args(argv)
    if args.stacks:
        print(summarise(parse(args.stacks)))
        return 0
    snapshots = ensure(args.work, 200_000, 1_000_000)
    root, version = snapshots["ivf"]
    manifest = json.loads((root / version / "manifest.json").read_text())
    mixes = Mixes(manifest["counts"]["users"], manifest["counts"]["items"], args.k, 20_000)
    log = args.work / f"server-profile-{args.service}.log"
    if args.service == "ours":
        prefix = f"bench-{secrets.token_hex(4)}:uvec"
        server = start_ours(root, prefix, args.redis_url, {}, log)
    else:
        server = start_naive(*snapshots["hnsw"], args.redis_url, log)
    out = args.work / f"profile-{args.service}-{args.mix}.txt"
    try:
        asyncio.run(run_step(HOST, server.port, 200, 2, mixes.stream("features")))  # warm-up
        if args.mix == "warm":
            warm = (mixes.recall({"user_id": u, "k": args.k}) for u in mixes.warm_ids)
            asyncio.run(run_step(HOST, server.port, 800, len(mixes.warm_ids) / 800, warm))
        command = [str(Path(sys.executable).with_name("py-spy")), "record", "--format", "raw",
                   "--rate", "250", "--duration", str(int(args.seconds)), "--pid",
                   str(server.process.pid), "--output", str(out), "--nonblocking"]  # fmt: skip
        if args.native:
            command.append("--native")
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
        cpu = server.cpu_s()
        result = asyncio.run(
            run_step(HOST, server.port, args.rate, args.seconds, mixes.stream(args.mix))
        )
        cpu = server.cpu_s() - cpu
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0:
            print(err.decode(errors="replace"), file=sys.stderr)
            return 1
    finally:
        server.stop()
    print(f"{args.service} {args.mix} at {args.rate:.0f}/s: achieved {result.achieved:.0f}/s, "
          f"p50 {result.percentile(50):.2f} ms, p99 {result.percentile(99):.2f} ms, "
          f"errors {result.n_errors}; server CPU {1000 * cpu / max(result.ok, 1):.3f} ms per "
          f"request; load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(summarise(parse(out)))
    print(f"\nstacks in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
