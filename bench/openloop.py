"""An open-loop HTTP/1.1 load generator: requests leave on a fixed clock, whatever the server.

Request ``i`` of a step is *scheduled* at ``start + i / rate``; its latency is measured from
that scheduled time to the last byte of its response, so time spent waiting for a free
connection (because the server is behind) counts: no coordinated omission. Requests go over
keep-alive connections (raw asyncio protocols, no HTTP library: the generator shares the
machine with the server and must stay cheap); a request that finds every connection busy
opens another one, up to ``max_connections``, then waits in a queue.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

# (payload bytes, check of the response body); check returns an error text or None, and a
# text starting "short" for an answer that counts but had fewer items than asked
Request = tuple[bytes, Callable[[bytes], str | None]]


@dataclass
class StepResult:
    rate: float  # scheduled requests per second
    sent: int
    seconds: float  # first scheduled send -> last response
    latencies_ms: np.ndarray  # [ok] from the scheduled send time
    errors: dict[str, int] = field(default_factory=dict)
    client_cpu_s: float = 0.0
    short: int = 0  # answered with fewer than k items (counted in ok)
    refused_ms: np.ndarray = field(default_factory=lambda: np.empty(0))  # [503s] latencies

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def achieved(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.ok else float("inf")

    @property
    def n_errors(self) -> int:
        return sum(self.errors.values())


# A connection idle this long is closed rather than reused: uvicorn closes keep-alive
# connections after 5 s idle, and a request sent as it does so is lost on the way.
IDLE_REUSE_S = 4.0


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, client: _Client):
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.pending: tuple[float, Callable[[bytes], str | None]] | None = None
        self.header_end = -1
        self.body_length = -1
        self.status = 0
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, scheduled: float, request: Request) -> None:
        assert self.transport is not None and self.pending is None
        self.pending = (scheduled, request[1])
        self.transport.write(request[0])

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.header_end < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.header_end = end + 4
            head = bytes(self.buffer[: end + 2]).lower()  # every header line ends in CRLF
            self.status = int(head[9:12])
            at = head.find(b"content-length:")
            self.body_length = int(head[at + 15 : head.find(b"\r\n", at)]) if at >= 0 else 0
        if len(self.buffer) < self.header_end + self.body_length:
            return
        body = bytes(self.buffer[self.header_end : self.header_end + self.body_length])
        del self.buffer[: self.header_end + self.body_length]
        self.header_end, status = -1, self.status
        pending, self.pending = self.pending, None
        if pending is None:
            return
        scheduled, check = pending
        if status >= 300:
            self.client.done(self, scheduled, f"http {status}")
        else:
            self.client.done(self, scheduled, check(body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        pending, self.pending = self.pending, None
        self.client.lost(self, pending[0] if pending else None)


class _Client:
    def __init__(self, host: str, port: int, max_connections: int):
        self.host, self.port, self.max_connections = host, port, max_connections
        self.loop = asyncio.get_running_loop()
        self.idle: deque[_Connection] = deque()
        self.opened = 0
        self.backlog: deque[tuple[float, Request]] = deque()
        self.latencies: list[float] = []
        self.refused: list[float] = []  # latencies of 503 answers (admission refusals)
        self.errors: dict[str, int] = {}
        self.outstanding = 0
        self.short = 0
        self.last_done = 0.0
        self.all_done: asyncio.Future[None] | None = None

    def dispatch(self, scheduled: float, request: Request) -> None:
        self.outstanding += 1
        while self.idle:
            connection = self.idle.pop()
            if self.loop.time() - connection.idle_since < IDLE_REUSE_S:
                connection.send(scheduled, request)
                return
            if connection.transport is not None:  # the server may be closing it right now
                connection.transport.close()
        self.backlog.append((scheduled, request))
        if self.opened < self.max_connections:
            self.opened += 1
            self.loop.create_task(self._open())

    async def _open(self) -> None:
        try:
            _, connection = await self.loop.create_connection(
                lambda: _Connection(self), self.host, self.port
            )
        except OSError as exc:
            self.opened -= 1
            if self.backlog:
                self._finish(self.backlog.popleft()[0], f"connect: {exc.__class__.__name__}")
            return
        self._next(connection)

    def _next(self, connection: _Connection) -> None:
        if self.backlog:
            connection.send(*self.backlog.popleft())
        else:
            connection.idle_since = self.loop.time()
            self.idle.append(connection)

    def done(self, connection: _Connection, scheduled: float, error: str | None) -> None:
        self._finish(scheduled, error)
        self._next(connection)

    def lost(self, connection: _Connection, scheduled: float | None) -> None:
        self.opened -= 1
        if connection in self.idle:
            self.idle.remove(connection)
        if scheduled is not None:
            self._finish(scheduled, "connection lost")

    def _finish(self, scheduled: float, error: str | None) -> None:
        now = self.loop.time()
        self.last_done = now
        if error is None or error.startswith("short"):  # answered, with fewer than k items
            self.latencies.append((now - scheduled) * 1000)
            self.short += error is not None
        else:
            self.errors[error] = self.errors.get(error, 0) + 1
            if error == "http 503":
                self.refused.append((now - scheduled) * 1000)
        self.outstanding -= 1
        if self.outstanding == 0 and self.all_done is not None and not self.all_done.done():
            self.all_done.set_result(None)

    def close(self) -> None:
        for connection in self.idle:
            if connection.transport is not None:
                connection.transport.close()


async def run_step(
    host: str,
    port: int,
    rate: float,
    seconds: float,
    requests: Iterator[Request],
    max_connections: int = 256,
    drain_s: float = 10.0,
) -> StepResult:
    """Send ``rate * seconds`` requests on schedule; wait up to ``drain_s`` for the last ones."""
    client = _Client(host, port, max_connections)
    loop = client.loop
    total = int(rate * seconds)
    batch = [next(requests) for _ in range(total)]  # rendered before the clock starts
    cpu = os.times()
    start = loop.time() + 0.05
    sent = 0
    while sent < total:
        now = loop.time()
        due = min(total, int((now - start) * rate) + 1)
        while sent < due:
            client.dispatch(start + sent / rate, batch[sent])
            sent += 1
        if sent < total:
            await asyncio.sleep(max(0.0, start + sent / rate - loop.time()))
    if client.outstanding:
        client.all_done = loop.create_future()
        try:
            await asyncio.wait_for(client.all_done, drain_s)
        except TimeoutError:
            client.errors["timeout"] = client.errors.get("timeout", 0) + client.outstanding
    client.close()
    used = os.times()
    elapsed = max(client.last_done, start + total / rate) - start
    return StepResult(
        rate=rate,
        sent=total,
        seconds=elapsed,
        latencies_ms=np.array(client.latencies, dtype=np.float64),
        errors=client.errors,
        short=client.short,
        refused_ms=np.array(client.refused, dtype=np.float64),
        client_cpu_s=(used.user - cpu.user) + (used.system - cpu.system),
    )


def http_post(host: str, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def http_get(host: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def process_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wall() -> float:
    return time.perf_counter()
