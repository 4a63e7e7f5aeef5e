"""Open-loop load benchmark of `recall serve` against the naive baseline, on 1M items, k=100.

    .venv/bin/python bench/load.py                      # sweep both services, every mix
    .venv/bin/python bench/load.py --rates 1000 --services ours --mixes warm,cold
    .venv/bin/python bench/load.py --env RECALL_CACHE__LOCAL_MAX_ENTRIES=0   # a knob, ours only

Builds (once, cached in ``--work``) the 1M-item snapshots of ``bench/big_snapshot.py``, starts
`recall serve` (IVF-Flat snapshot, Redis at ``--redis-url``) and ``bench/naive_service.py``
(HNSW snapshot, same Redis) as subprocesses on free ports, one worker each, and drives them
with ``bench/openloop.py`` from this process (same machine). Mixes:

- ``warm``: known users whose vectors were requested before the step (cache hits; the naive
  service never reads its cache, so for it this is the same work as ``cold``)
- ``cold``: known users never requested before (cache misses, user tower, cache writes)
- ``features``: unknown users (new ids) sending profile features (always computed)
- ``similar``: ``GET /v1/items/{id}/similar`` for random items

Each step sends ``rate * --seconds`` requests on a fixed clock, at most
``--max-step-requests`` (a fast step is shorter: the ``cold`` mix has 180k never-seen users
for the whole run). Without ``--rates`` the rate
grows by 25% per step until two steps in a row fail (a step passes with p99 <= ``--p99-ms``,
no errors and >= 98% of the rate achieved); the highest passing rate is the mix's throughput
at that p99 bound. A sweep that runs out of cold users ends there, and its rate is printed as a
lower bound (``>=``). CPU per request is the server's utime + stime (/proc/<pid>/stat) over
the step, and the same for redis-server when this user can read its /proc entry. Results
are printed as tables and written to ``<work>/load-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from big_snapshot import ensure  # noqa: E402
from openloop import Request, http_get, http_post, process_cpu_s, run_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
MIXES = ("warm", "cold", "features", "similar")
OCCUPATIONS = ("student", "engineer", "artist", "writer", "programmer", "retired", "other")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Server:
    """A service subprocess on a free port, ready once /readyz answers 200."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], port: int, log: Path):
        self.name, self.port = name, port
        self.log = log.open("wb")
        self.process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=self.log,
                                        stderr=self.log)  # fmt: skip
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited; see {log}")
            try:
                if httpx.get(f"http://{HOST}:{port}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{name} not ready after 600 s; see {log}")

    def cpu_s(self) -> float:
        return process_cpu_s(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def start_ours(root: Path, prefix: str, redis_url: str, extra: dict[str, str], log: Path) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECALL_")}
    env.update(RECALL_REDIS_URL=redis_url, RECALL_CACHE__KEY_PREFIX=prefix,
               RECALL_LOG_LEVEL="WARNING")  # fmt: skip
    env.update(extra)
    command = [sys.executable, "-m", "recall", "serve", "--snapshots", str(root),
               "--host", HOST, "--port", str(port)]  # fmt: skip
    return Server("ours", command, env, port, log)


def start_naive(root: Path, version: str, redis_url: str, log: Path) -> Server:
    port = free_port()
    script = str(ROOT / "bench" / "naive_service.py")
    command = [sys.executable, script, "--snapshots", str(root), "--version", version,
               "--port", str(port), "--redis-url", redis_url]  # fmt: skip
    return Server("naive", command, dict(os.environ), port, log)


def expect_items(k: int) -> Callable[[bytes], str | None]:
    """An answer with k items passes; fewer is reported as ``short`` (a quality note: HNSW
    can return fewer than k), anything else is an error."""

    def check(body: bytes) -> str | None:
        found = body.count(b'{"item_id"')
        if found == k:
            return None
        return f"short: {found} items" if 0 < found < k else f"{found} items, not {k}"

    return check


class UsersUsedUp(RuntimeError):
    """The ``cold`` mix has handed out every never-seen user of the snapshot."""


class Mixes:
    """Request streams. Cold users are handed out once per run, never repeated."""

    def __init__(self, users: int, items: int, k: int, warm_users: int, seed: int = 0):
        rng = random.Random(seed)
        ids = [str(u) for u in range(1, users + 1)]
        rng.shuffle(ids)
        self.warm_ids, self.cold_ids = ids[:warm_users], iter(ids[warm_users:])
        self.items, self.k, self.rng = items, k, rng
        self.anonymous = itertools.count()
        self.check = expect_items(k)

    def recall(self, body: dict[str, Any]) -> Request:
        return http_post(HOST, "/v1/recall", json.dumps(body).encode()), self.check

    def stream(self, mix: str) -> Iterator[Request]:
        rng, k = self.rng, self.k
        while True:
            if mix == "warm":
                yield self.recall({"user_id": rng.choice(self.warm_ids), "k": k})
            elif mix == "cold":
                user = next(self.cold_ids, None)
                if user is None:
                    raise UsersUsedUp("cold users used up: lower --seconds or the rates")
                yield self.recall({"user_id": user, "k": k})
            elif mix == "features":
                features = {"age": rng.randint(16, 70), "gender": rng.choice("FM"),
                            "occupation": rng.choice(OCCUPATIONS),
                            "zip_prefix": f"{rng.randint(0, 99999):05d}"}  # fmt: skip
                user = f"new-{next(self.anonymous)}-{secrets.token_hex(3)}"
                yield self.recall({"user_id": user, "features": features, "k": k})
            else:
                item = rng.randint(1, self.items)
                yield http_get(HOST, f"/v1/items/{item}/similar?k={k}"), self.check

    def heavy(self, size: int = 64, k: int = 1000, excluded: int = 1000) -> Iterator[Request]:
        """Batches of ``size`` warm users, each with ``k`` and ``excluded`` item ids left out."""
        rng = self.rng
        while True:
            requests = [
                {"user_id": rng.choice(self.warm_ids), "k": k,
                 "exclude_item_ids": [str(rng.randint(1, self.items)) for _ in range(excluded)]}
                for _ in range(size)
            ]  # fmt: skip
            body = json.dumps({"requests": requests}).encode()
            yield http_post(HOST, "/v1/recall/batch", body), expect_items(size * k)


def redis_pid(url: str) -> int | None:
    try:
        client = redis.Redis.from_url(url, socket_timeout=1)
        pid = int(client.info("server")["process_id"])
        client.close()
        process_cpu_s(pid)
        return pid
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None


def step(server: Server, rate: float, seconds: float, requests: Iterator[Request],
         redis_at: int | None) -> dict[str, Any]:  # fmt: skip
    load = os.getloadavg()[0]
    cpu = server.cpu_s()
    redis_cpu = process_cpu_s(redis_at) if redis_at else 0.0
    result = asyncio.run(run_step(HOST, server.port, rate, seconds, requests))
    cpu = server.cpu_s() - cpu
    redis_cpu = process_cpu_s(redis_at) - redis_cpu if redis_at else None
    done = max(result.ok + result.n_errors, 1)
    return {
        "service": server.name, "rate": rate, "achieved": round(result.achieved, 1),
        "p50": result.percentile(50), "p95": result.percentile(95),
        "p99": result.percentile(99),
        "max": float(result.latencies_ms.max()) if result.ok else float("inf"),
        "errors": result.n_errors, "error_kinds": result.errors, "short": result.short,
        "server_cpu_ms": 1000 * cpu / done,
        "redis_cpu_ms": 1000 * redis_cpu / done if redis_cpu is not None else None,
        "client_cpu_ms": 1000 * result.client_cpu_s / done, "load1": load,
        "refused": len(result.refused_ms),
        "refused_p50": float(np.percentile(result.refused_ms, 50)) if len(result.refused_ms)
        else None,
        "refused_p99": float(np.percentile(result.refused_ms, 99)) if len(result.refused_ms)
        else None,
    }  # fmt: skip


def overload_step(server: Server, mix: str, best: float, stream: Iterator[Request],
                  redis_at: int | None, seconds: float) -> dict[str, Any]:  # fmt: skip
    """One step at twice the highest passing rate: the admitted requests' latency and how
    fast the rest were refused (503 ``overloaded``)."""
    rate = 2 * best
    return {**step(server, rate, seconds, stream, redis_at), "mix": f"{mix} 2x"}


def heavy_step(server: Server, mixes: Mixes, rate: float, heavy_rate: float, seconds: float,
               with_heavy: bool) -> dict[str, Any]:  # fmt: skip
    """The warm mix at ``rate``, alone or beside a heavy client sending ``heavy_rate`` batches
    a second of 64 requests with k=1000 and 1,000 excluded items each; the row reports the
    warm requests (the heavy client's own answers are checked, not timed)."""

    # Both streams rendered before either clock starts: rendering the heavy bodies (~30 ms
    # each) inside a running step would stall the generator and delay the warm sends.
    warm_requests = [next(mixes.stream("warm")) for _ in range(int(rate * seconds) + 1)]
    heavy_stream = mixes.heavy()
    heavy_requests = [next(heavy_stream) for _ in range(int(heavy_rate * seconds) + 1)]

    async def both() -> tuple[Any, Any]:
        warm = run_step(HOST, server.port, rate, seconds, iter(warm_requests))
        if not with_heavy:
            return await warm, None
        heavy = run_step(HOST, server.port, heavy_rate, seconds, iter(heavy_requests),
                         max_connections=8)  # fmt: skip
        return await asyncio.gather(warm, heavy)

    cpu = server.cpu_s()
    warm, heavy = asyncio.run(both())
    cpu = server.cpu_s() - cpu
    return {
        "service": server.name, "mix": "warm + heavy" if with_heavy else "warm alone",
        "rate": rate, "achieved": round(warm.achieved, 1), "p50": warm.percentile(50),
        "p99": warm.percentile(99), "max": float(warm.latencies_ms.max()) if warm.ok else None,
        "errors": warm.n_errors, "error_kinds": warm.errors,
        "heavy_batches": heavy.ok if heavy else 0,
        "heavy_errors": heavy.errors if heavy else {},
        "server_cpu_s": cpu,
    }  # fmt: skip


def passes(row: dict[str, Any], p99_ms: float) -> bool:
    return row["errors"] == 0 and row["p99"] <= p99_ms and row["achieved"] >= 0.98 * row["rate"]


def fmt(row: dict[str, Any]) -> str:
    redis_ms = "-" if row["redis_cpu_ms"] is None else f"{row['redis_cpu_ms']:.3f}"
    return (
        f"{row['service']:6} {row['mix']:8} {row['rate']:7.0f} {row['achieved']:8.1f} "
        f"{row['p50']:7.2f} {row['p95']:7.2f} {row['p99']:7.2f} {row['max']:8.2f} "
        f"{row['errors']:6d} {row['short']:5d} {row['server_cpu_ms']:8.3f} {redis_ms:>7} "
        f"{row['client_cpu_ms']:7.3f} {row['load1']:5.2f}"
    )


HEADER = (
    f"{'svc':6} {'mix':8} {'rate':>7} {'achieved':>8} {'p50 ms':>7} {'p95 ms':>7} "
    f"{'p99 ms':>7} {'max ms':>8} {'errors':>6} {'short':>5} {'srv ms/r':>8} {'rds ms':>7} "
    f"{'cli ms':>7} {'load1':>5}"
)


def sweep(run: Callable[[float], dict[str, Any]], start: float, p99_ms: float,
          growth: float = 1.25) -> tuple[float, list[dict[str, Any]], bool]:  # fmt: skip
    """Raise the rate by ``growth`` until two steps in a row fail (one noisy step on a shared
    machine does not end the sweep); returns the highest passing rate, every row, and whether
    the sweep was cut short by running out of cold users (the rate is then a lower bound)."""
    rows: list[dict[str, Any]] = []
    best, rate, failed = 0.0, start, 0
    while failed < 2:
        try:
            row = run(rate)
        except UsersUsedUp:
            return best, rows, True
        rows.append(row)
        if passes(row, p99_ms):
            best, failed = max(best, rate), 0
        else:
            failed += 1
        rate = round(rate * growth)
    return best, rows, False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--services", default="ours,naive")
    parser.add_argument("--mixes", default=",".join(MIXES))
    parser.add_argument("--rates", help="comma list of fixed rates (default: sweep)")
    parser.add_argument("--start", default="ours=400,naive=100", help="first sweep rate")
    parser.add_argument("--seconds", type=float, default=10.0, help="per step")
    parser.add_argument("--max-step-requests", type=int, default=20_000)
    parser.add_argument("--p99-ms", type=float, default=15.0)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--warm-users", type=int, default=20_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for ours")
    parser.add_argument(
        "--overload",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after each of ours' sweeps, a step at twice its best rate",
    )
    parser.add_argument(
        "--heavy-rate",
        type=float,
        default=2.0,
        help="heavy batches/s beside the warm mix (0: no heavy-client step)",
    )
    parser.add_argument("--heavy-base", type=float, default=1000.0,
                        help="the warm mix's rate in the heavy-client step")  # fmt: skip
    args = parser.parse_args(argv)
    kinds = ("ivf", "hnsw") if "naive" in args.services.split(",") else ("ivf",)
    snapshots = ensure(args.work, 200_000, 1_000_000, kinds)
    root, version = snapshots["ivf"]
    manifest = json.loads((root / version / "manifest.json").read_text())
    mixes = Mixes(manifest["counts"]["users"], manifest["counts"]["items"], args.k,
                  args.warm_users)  # fmt: skip
    starts = dict(part.split("=") for part in args.start.split(","))
    prefix = f"bench-{secrets.token_hex(4)}:uvec"
    extra = dict(item.split("=", 1) for item in args.env)
    redis_at = redis_pid(args.redis_url)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "steps": [],
                               "best": {}, "cores": os.cpu_count()}  # fmt: skip
    print(f"load average {os.getloadavg()}; p99 bound {args.p99_ms} ms; k={args.k}")
    print(HEADER)
    for name in args.services.split(","):
        log = args.work / f"server-{name}-{stamp}.log"
        if name == "ours":
            server = start_ours(root, prefix, args.redis_url, extra, log)
        else:
            server = start_naive(*snapshots["hnsw"], args.redis_url, log)
        try:
            asyncio.run(run_step(HOST, server.port, 200, 2, mixes.stream("features")))
            for mix in args.mixes.split(","):
                if mix == "warm" and name == "ours":  # every warm user once: the step hits
                    warm = (mixes.recall({"user_id": u, "k": args.k}) for u in mixes.warm_ids)
                    asyncio.run(run_step(HOST, server.port, 800, len(mixes.warm_ids) / 800, warm))
                stream = mixes.stream(mix)

                def run(
                    rate: float,
                    mix: str = mix,
                    stream: Iterator[Request] = stream,
                    server: Server = server,
                ) -> dict[str, Any]:
                    seconds = min(args.seconds, args.max_step_requests / rate)
                    row = {**step(server, rate, seconds, stream, redis_at), "mix": mix}
                    print(fmt(row), flush=True)
                    results["steps"].append(row)
                    return row

                if args.rates:
                    for rate in args.rates.split(","):
                        run(float(rate))
                    continue
                best, _, cut = sweep(run, float(starts[name]), args.p99_ms)
                results["best"].setdefault(mix, {})[name] = best
                if cut:
                    results.setdefault("lower_bounds", []).append([mix, name])
                if name == "ours" and args.overload and best and not cut:
                    seconds = min(args.seconds, args.max_step_requests / (2 * best))
                    row = overload_step(server, mix, best, stream, redis_at, seconds)
                    print(fmt(row) + f"  refused {row['refused']} "
                          f"(p50 {row['refused_p50']} ms, p99 {row['refused_p99']} ms)",
                          flush=True)  # fmt: skip
                    results.setdefault("overload", []).append(row)
            if name == "ours" and args.heavy_rate > 0:
                for with_heavy in (False, True, False, True):
                    row = heavy_step(server, mixes, args.heavy_base, args.heavy_rate,
                                     args.seconds, with_heavy)  # fmt: skip
                    print(f"{row['mix']:14} {row['rate']:6.0f}/s  p50 {row['p50']:6.2f}  "
                          f"p99 {row['p99']:6.2f}  max {row['max']}  errors {row['errors']}  "
                          f"heavy batches {row['heavy_batches']} {row['heavy_errors']}",
                          flush=True)  # fmt: skip
                    results.setdefault("heavy", []).append(row)
        finally:
            server.stop()
    cleanup(args.redis_url, prefix)
    if results["best"]:
        print(f"\nthroughput at p99 <= {args.p99_ms} ms (requests/s, one worker, "
              f"{os.cpu_count()} cores shared with the load generator)")  # fmt: skip
        print(f"{'mix':10} {'ours':>8} {'naive':>8} {'ratio':>7}")
        for mix, best in results["best"].items():
            ours, naive = best.get("ours", 0.0), best.get("naive", 0.0)
            ratio = f"{ours / naive:.1f}x" if naive else "-"
            floors = {name for m, name in results.get("lower_bounds", []) if m == mix}
            cells = [(">=" if name in floors else "") + f"{best.get(name, 0.0):.0f}"
                     for name in ("ours", "naive")]  # fmt: skip
            bound = ">=" if floors == {"ours"} else ""  # ours cut short: the ratio is a floor
            print(f"{mix:10} {cells[0]:>8} {cells[1]:>8} {bound + ratio:>7}")
    out = args.work / f"load-{stamp}.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nload average {os.getloadavg()}; results in {out}")
    return 0


def cleanup(url: str, prefix: str) -> None:
    """Delete this run's cache keys (ours and naive's) from Redis."""
    client = redis.Redis.from_url(url)
    for pattern in (f"{prefix}:*", "naive:uvec:*"):
        batch = []
        for key in client.scan_iter(match=pattern, count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    client.close()


if __name__ == "__main__":
    raise SystemExit(main())
