"""DrainingServer: uvicorn's graceful shutdown, preceded by a short drain."""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """On SIGTERM, go on accepting for ``drain_s``, then shut down as uvicorn does.

    uvicorn closes at once every connection whose request it has not started reading. A
    request the kernel accepted while the event loop was busy (one batch waiting on a slow
    Redis, say) would then get a reset instead of an answer. Waiting ``drain_s`` first lets the
    loop read those requests; uvicorn then answers them with the rest of what is in flight.
    """

    def __init__(self, config: uvicorn.Config, drain_s: float):
        super().__init__(config)
        self.drain_s = drain_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.drain_s > 0:
            log.info("draining for %.0f ms before the shutdown", self.drain_s * 1000)
            await asyncio.sleep(self.drain_s)
        await super().shutdown(sockets)
