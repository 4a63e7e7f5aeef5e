"""Operations routes: liveness, readiness and Prometheus metrics (no auth)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from service.errors import JSONBody
from service.metrics import Metrics
from service.schemas import ErrorBody, ReadyResponse
from service.state import Services, services


def router(metrics: Metrics) -> APIRouter:
    api = APIRouter(tags=["operations"])

    @api.get("/healthz")
    async def healthz() -> JSONBody:
        """The process answers (says nothing about the snapshot)."""
        return JSONBody({"status": "ok"})

    @api.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ErrorBody}})
    async def readyz(state: Annotated[Services, Depends(services)]) -> JSONBody:
        """200 with the snapshot version and cache state once a snapshot is served, else 503."""
        engine = state.holder.require()
        await run_in_threadpool(state.cache.ping)  # lets a recovered Redis close the breaker
        body: dict[str, object] = {
            "status": "ready",
            "snapshot": engine.version,
            "cache": state.cache.state(),
        }
        monitor = state.recaller.monitor
        warning = monitor.warning(engine) if monitor is not None else None
        if warning is not None:
            body["warnings"] = [warning]  # still ready: a warning for the operator
        return JSONBody(body)

    @api.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus text format, from this app's own registry."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return api
