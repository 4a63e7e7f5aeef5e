"""A synchronous client for an app: runs its lifespan and sends requests in-process.

Starlette's TestClient wants the httpx2 package; this does the same with httpx's
ASGITransport and an anyio blocking portal. Like uvicorn, it hands every request a shallow
copy of the lifespan state.
"""

from __future__ import annotations

import asyncio
import contextlib
from functools import partial
from typing import Any

import anyio.from_thread
import httpx
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send


class AppClient:
    def __init__(self, app: FastAPI, headers: dict[str, str] | None = None):
        self.app, self.headers = app, headers or {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> AppClient:
        self.portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal())
        lifespan = self.app.router.lifespan_context(self.app)
        state = self.portal.call(lifespan.__aenter__) or {}
        self.state = state  # the lifespan's state: tests reach the services through it
        self._stack.callback(self.portal.call, lifespan.__aexit__, None, None, None)

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = dict(state)
            await self.app(scope, receive, send)

        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=with_state), base_url="http://test"
        )
        self._stack.callback(self.portal.call, self.client.aclose)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        call = partial(self.client.request, method, url, headers=headers, **kwargs)
        return self.portal.call(call)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def post_together(self, url: str, bodies: list[bytes]) -> list[httpx.Response]:
        """POST each JSON body concurrently on the app's loop (so they share its passes)."""
        headers = {**self.headers, "Content-Type": "application/json"}

        async def send() -> list[httpx.Response]:
            calls = (self.client.post(url, content=body, headers=headers) for body in bodies)
            return list(await asyncio.gather(*calls))

        return self.portal.call(send)
