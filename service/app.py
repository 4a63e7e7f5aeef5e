"""create_app(settings): the FastAPI factory. Nothing happens at import time.

The lifespan sets thread counts, opens the user-vector cache (Redis when ``RECALL_REDIS_URL``
is set, behind an in-process first level; else in-process only), loads the newest loadable
snapshot, and closes the cache on shutdown. Handlers reach everything through
``request.state.services`` (``service.state``).
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import faiss
import torch
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from service import errors, fastpath
from service.batcher import RecallBatcher
from service.cache import EmbeddingCache, LocalEmbeddingCache, RedisEmbeddingCache
from service.errors import Code
from service.fleet import Fleet, FleetSync
from service.holder import SnapshotHolder
from service.metrics import Metrics, RequestMiddleware
from service.monitor import AnnMonitor
from service.recaller import Recaller
from service.routes import admin, health, recall
from service.schemas import request_schemas
from service.settings import Settings, load_settings
from service.state import Services
from service.tiered import TieredEmbeddingCache
from service.watch import Guard, Watch

log = logging.getLogger(__name__)


def open_cache(settings: Settings, metrics: Metrics) -> EmbeddingCache:
    """Redis (written behind, read through an in-process LRU) when a URL is configured, else
    the in-process LRU alone."""
    local = LocalEmbeddingCache(settings.cache.local_max_entries)
    if settings.redis_url is None:
        log.info("RECALL_REDIS_URL unset: user vectors cached in process")
        return local
    remote = RedisEmbeddingCache.from_url(
        settings.redis_url.get_secret_value(),
        settings.redis,
        on_error=lambda operation: metrics.cache_errors.labels(operation).inc(),
    )
    return TieredEmbeddingCache(
        local,
        remote,
        settings.cache.ttl_s,
        on_drop=metrics.cache_write_drops.inc,
        write_behind=settings.cache.write_behind,
    )


def create_app(settings: Settings, cache: EmbeddingCache | None = None) -> FastAPI:
    """The service app. ``cache`` replaces the configured one (tests pass their own)."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Services]]:
        threads = torch.get_num_threads(), faiss.omp_get_max_threads()
        torch.set_num_threads(settings.threads.torch)
        faiss.omp_set_num_threads(settings.threads.faiss)
        opened = cache if cache is not None else open_cache(settings, metrics)
        fleet: FleetSync | None = None
        poller: asyncio.Task[None] | None = None
        guarding: asyncio.Task[None] | None = None
        monitor: AnnMonitor | None = None
        try:
            watch = Watch(settings.watch)
            holder = SnapshotHolder(settings.snapshots, metrics, settings.gates, watch)
            if settings.redis_url is not None and settings.fleet.enabled:
                fleet = FleetSync(
                    Fleet.from_url(
                        settings.redis_url.get_secret_value(), settings.redis, settings.fleet
                    ),
                    holder,
                    metrics,
                )
                await run_in_threadpool(fleet.start_up)
                poller = asyncio.create_task(fleet.run())
            else:
                await run_in_threadpool(holder.load_newest)
            # torch and friends leave ~200k objects that every full collection walks, for
            # hundreds of milliseconds during which no request moves; freeze them (and the
            # first snapshot) out of its way. Replaced engines are freed by reference counts.
            gc.freeze()
            monitor = AnnMonitor(settings.monitor, metrics)
            monitor.start()
            recaller = Recaller(opened, metrics, settings.cache, monitor)
            batcher = RecallBatcher(recaller, settings.batch, metrics, watch=watch)
            rollback = fleet.rollback if fleet is not None else holder.rollback
            guard = Guard(watch, rollback, metrics.auto_rollbacks.inc, settings.watch.check_every_s)
            guarding = asyncio.create_task(guard.run())
            services = Services(settings, holder, opened, recaller, metrics, batcher, fleet, guard)
            yield {"services": services}
        finally:
            for task in (poller, guarding):
                if task is not None:
                    task.cancel()
            if monitor is not None:
                monitor.stop()
            if fleet is not None:
                fleet.fleet.close()
            gc.unfreeze()  # give the collector back what start-up froze (tests run many apps)
            opened.close()
            torch.set_num_threads(threads[0])  # process-wide; give back what we found
            faiss.omp_set_num_threads(threads[1])

    docs = {} if settings.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(
        **docs,  # type: ignore[arg-type]
        title="two-tower recall",
        summary="Top-K candidate items for a user from a two-tower model and a FAISS index",
        lifespan=lifespan,
        # Prometheus metrics are our own; the OpenTelemetry hooks cost a provider lookup per
        # request even with nothing configured.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    errors.install(app)
    schemas = request_schemas(settings.limits)
    recall_api = recall.router(settings.limits, schemas)
    routes = {getattr(r, "path", None): r for r in recall_api.routes}
    app.add_middleware(
        fastpath.RecallFastPath,
        schema=schemas[0],
        route=routes[fastpath.PATH],
        similar_route=routes[fastpath.SIMILAR_PATH],
        batch_schema=schemas[1],
        batch_route=routes[fastpath.BATCH_PATH],
        limits=settings.limits,
    )
    keys = settings.api_key_set()
    if keys:
        app.add_middleware(ApiKeyMiddleware, keys=keys)  # before both /v1 entry points
    app.add_middleware(  # outermost: times everything, limits bodies for the fast path too
        RequestMiddleware, metrics=metrics, max_body_bytes=settings.limits.max_body_bytes
    )
    app.include_router(recall_api)  # first: the hot routes match without trying the others
    app.include_router(health.router(metrics))
    app.include_router(admin.router(settings))
    return app


class ApiKeyMiddleware:
    """Refuses /v1 requests without one of ``keys`` (401, or 403 for a wrong key)."""

    def __init__(self, app: ASGIApp, keys: frozenset[bytes]):
        self.app, self.keys = app, keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                given = value
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:]
        if given is None:
            response = errors.error_response(
                Code.UNAUTHORIZED,
                "send an API key as `X-API-Key: <key>` or `Authorization: Bearer <key>`",
                {"WWW-Authenticate": "Bearer"},
            )
        elif not any(hmac.compare_digest(given, key) for key in self.keys):
            response = errors.error_response(Code.FORBIDDEN, "unknown API key")
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


def app_from_env() -> FastAPI:
    """For ``uvicorn --factory service.app:app_from_env``: settings from the environment."""
    return create_app(load_settings())
