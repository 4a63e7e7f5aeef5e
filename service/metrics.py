"""Prometheus metrics in a per-app registry, and the middleware that times every request.

The middleware is also the catch-all: an exception no handler took is logged with its stack
and answered ``internal`` in the one error body.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import Code, error_response

log = logging.getLogger(__name__)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    """All of the service's metrics, registered in their own ``CollectorRegistry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_seconds = Histogram(
            "recall_http_request_duration_seconds", "Request latency by route template",
            ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "recall_http_requests_in_flight", "Requests received and not yet answered", registry=r
        )
        self.cache_hits = Counter(
            "recall_cache_hits", "User vectors read from the cache", registry=r
        )
        self.cache_misses = Counter("recall_cache_misses", "User vectors not cached", registry=r)
        self.cache_errors = Counter(
            "recall_cache_errors", "Cache operations that failed (fails open)", ["operation"],
            registry=r,
        )  # fmt: skip
        self.cache_invalid = Counter(
            "recall_cache_invalid", "Cached user vectors refused (not finite unit vectors)",
            registry=r,
        )  # fmt: skip
        self.cache_write_drops = Counter(
            "recall_cache_write_drops", "User vectors not written to Redis: writes queued up",
            registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "recall_batch_size", "Requests answered together by one batch worker pass",
            buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.shed = Counter(
            "recall_shed_requests", "Requests refused with 503 overloaded (admission)", registry=r
        )
        self.user_source = Counter(
            "recall_user_vectors", "User vectors by source", ["source"], registry=r
        )
        self.snapshot = Info("recall_snapshot", "Snapshot being served", registry=r)
        self.reloads = Counter("recall_reloads", "Snapshot swaps (reload and rollback)", registry=r)
        self.reload_failures = Counter(
            "recall_reload_failures", "Reloads refused, by failed check", ["code"], registry=r
        )
        self.ann_recall = Gauge(
            "recall_ann_recall",
            "Online ANN recall@k against exact search",
            ["snapshot"],
            registry=r,
        )
        self.ann_samples = Counter(
            "recall_ann_recall_samples",
            "Requests whose ANN recall was measured",
            ["snapshot"],
            registry=r,
        )
        self.ann_dropped = Counter(
            "recall_ann_recall_dropped",
            "Samples dropped: the monitor's queue was full",
            registry=r,
        )
        self.auto_rollbacks = Counter(
            "recall_auto_rollbacks", "Snapshots the watch after a reload rolled back", registry=r
        )
        self.fleet_follows = Counter(
            "recall_fleet_follows", "Reloads to the fleet's version set elsewhere", registry=r
        )
        self.fleet_failures = Counter(
            "recall_fleet_failures", "Fleet versions this replica could not serve", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMiddleware:
    """Times each HTTP request by route template and status; logs one line at debug.

    Also refuses request bodies over ``max_body_bytes`` with 413 ``payload_too_large``: at
    once when Content-Length says so, else as soon as the bytes read pass the limit.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int | None = None):
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        started = False
        limit = self.max_body_bytes
        too_large = f"the request body is over {limit} bytes (RECALL_LIMITS__MAX_BODY_BYTES)"
        if limit is not None and scope["method"] not in ("GET", "HEAD"):
            length = _content_length(scope)
            if length is not None and length > limit:
                await error_response(Code.PAYLOAD_TOO_LARGE, too_large)(scope, receive, send)
                self.metrics.request_seconds.labels(scope["method"], "unmatched", "413").observe(
                    time.perf_counter() - start
                )
                return
            receive = _limited(receive, limit, too_large)

        async def watch(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, watch)
        except ClientDisconnect:  # the client went away mid-request: nothing to answer
            status = 499
            log.debug("client went away during %s %s", scope["method"], scope["path"])
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if started:
                raise
            await error_response(Code.INTERNAL, "internal error; see the service log")(
                scope, receive, watch
            )
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.request_seconds.labels(scope["method"], route, str(status)).observe(
                elapsed
            )
            log.debug(
                "request method=%s route=%s path=%s status=%d ms=%.2f",
                scope["method"], route, scope["path"], status, elapsed * 1000,
            )  # fmt: skip


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _limited(receive: Receive, limit: int, message: str) -> Receive:
    """``receive`` that raises 413 once more than ``limit`` body bytes came in (chunked)."""
    seen = 0

    async def counting() -> Message:
        nonlocal seen
        event = await receive()
        if event["type"] == "http.request":
            seen += len(event.get("body", b""))
            if seen > limit:
                raise HTTPException(413, message)
        return event

    return counting
