"""/admin routes: list snapshots, show the served one, reload and roll back (bearer token).

With no ``RECALL_ADMIN_TOKEN`` configured every admin route answers 403 ``admin_disabled``.
Blocking work (checksums, loading) runs in the threadpool, never on the event loop.
"""

from __future__ import annotations

import hmac
from typing import Annotated

import redis
from fastapi import APIRouter, Depends, Header, Query
from starlette.concurrency import run_in_threadpool

from index_builder.snapshot import list_snapshots
from service.errors import Code, JSONBody, ServiceError
from service.holder import Swap
from service.schemas import (
    ErrorBody,
    FleetResponse,
    ReloadRequest,
    SnapshotListResponse,
    SnapshotRef,
    SwapResponse,
)
from service.settings import Settings
from service.state import Services, services

ERRORS = {status: {"model": ErrorBody} for status in (401, 403, 409, 422)}
State = Annotated[Services, Depends(services)]


def router(settings: Settings) -> APIRouter:
    token = settings.admin_token

    async def authorize(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            raise ServiceError(
                Code.ADMIN_DISABLED, "admin routes are off: set RECALL_ADMIN_TOKEN to enable them"
            )
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ServiceError(
                Code.UNAUTHORIZED,
                "send the admin token as `Authorization: Bearer <RECALL_ADMIN_TOKEN>`",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            raise ServiceError(Code.FORBIDDEN, "wrong admin token")

    api = APIRouter(
        prefix="/admin",
        tags=["admin"],
        dependencies=[Depends(authorize)],
        responses=ERRORS,  # type: ignore[arg-type]
    )

    @api.get("/snapshots", response_model=SnapshotListResponse)
    async def snapshots(state: State, verify: Annotated[bool, Query()] = True) -> JSONBody:
        """Every snapshot on disk, newest first, with its status (``verify`` hashes files)."""
        holder = state.holder
        found = await run_in_threadpool(list_snapshots, holder.root, verify)
        serving = {}
        if holder.previous is not None:
            serving[holder.previous.version] = "previous"
        if holder.current is not None:
            serving[holder.current.version] = "current"
        return JSONBody(
            {
                "snapshots": [
                    {
                        "version": s.version,
                        "status": s.status,
                        "problem": s.problem,
                        "serving": serving.get(s.version),
                        "created": s.manifest.created if s.manifest else None,
                    }
                    for s in found
                ]
            }
        )

    @api.get("/snapshot", response_model=SnapshotRef)
    async def snapshot(state: State) -> JSONBody:
        """The version served now and the one a rollback would return to."""
        current, previous = state.holder.current, state.holder.previous
        return JSONBody(
            {
                "current": current.version if current else None,
                "previous": previous.version if previous else None,
            }
        )

    @api.post("/reload", response_model=SwapResponse)
    async def reload(state: State, body: ReloadRequest | None = None) -> JSONBody:
        """Load, verify and warm up a snapshot (default: newest valid), then swap it in."""
        version = body.version if body is not None else None
        swap = await run_in_threadpool(state.holder.reload, version)
        if state.fleet is not None:  # the fleet follows (service.fleet)
            await run_in_threadpool(state.fleet.announce)
        return _swap(swap)

    @api.post("/rollback", response_model=SwapResponse)
    async def rollback(state: State) -> JSONBody:
        """Serve the previous snapshot again (the whole fleet, with a Redis)."""
        if state.fleet is not None:  # the fleet's previous version, set by any replica
            return _swap(await run_in_threadpool(state.fleet.rollback))
        return _swap(await run_in_threadpool(state.holder.rollback))

    @api.get("/fleet", response_model=FleetResponse)
    async def fleet(state: State) -> JSONBody:
        """The fleet's version and the replicas alive (heartbeats), with what each serves."""
        current = state.holder.current
        here = current.version if current else None
        if state.fleet is None:
            return JSONBody({"fleet": False, "version": here, "replica": None, "replicas": []})
        sync = state.fleet
        try:
            version = await run_in_threadpool(sync.fleet.target)
            replicas = await run_in_threadpool(sync.fleet.replicas)
        except redis.RedisError as exc:
            raise ServiceError(Code.FLEET_UNAVAILABLE, f"the fleet's Redis: {exc}") from exc
        return JSONBody(
            {"fleet": True, "version": version, "replica": sync.fleet.name, "replicas": replicas}
        )

    return api


def _swap(swap: Swap) -> JSONBody:
    return JSONBody(
        {
            "changed": swap.changed,
            "current": swap.current,
            "previous": swap.previous,
            "message": swap.message,
        }
    )
