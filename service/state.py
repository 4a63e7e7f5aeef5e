"""Services: what the handlers of one app share, built in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from service.batcher import RecallBatcher
from service.cache import EmbeddingCache
from service.fleet import FleetSync
from service.holder import SnapshotHolder
from service.metrics import Metrics
from service.recaller import Recaller
from service.settings import Settings
from service.watch import Guard


@dataclass
class Services:
    """One per app; the holder inside is the only thing a reload changes."""

    settings: Settings
    holder: SnapshotHolder
    cache: EmbeddingCache
    recaller: Recaller
    metrics: Metrics
    batcher: RecallBatcher
    fleet: FleetSync | None = None  # with a Redis: the fleet's one version
    guard: Guard | None = None  # the watch after a reload (service.watch)


async def services(request: Request) -> Services:
    """FastAPI dependency: this app's services (from the lifespan state)."""
    found: Services = request.state.services
    return found
