"""POST /v1/recall without FastAPI's per-request machinery, for requests that validate.

A valid JSON body is parsed and validated exactly as FastAPI would (``json.loads``, then the
route's own pydantic schema), handed to the batcher and rendered with orjson, and the route
is recorded in the scope for the metrics. Anything else, another route, another content
type, a body that does not parse or validate, goes to the app unchanged with its body
replayed, so every error still comes from FastAPI's handlers and the OpenAPI spec is the
route's own. Routing, dependency solving and the exception wrappers were about a third of
the CPU of a cached recall (README "Performance").
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import JSONBody, ServiceError, error_response, http_error_response
from service.schemas import RecallRequest

PATH = "/v1/recall"


class RecallFastPath:
    """ASGI middleware answering valid ``POST /v1/recall`` requests itself."""

    def __init__(self, app: ASGIApp, schema: type[RecallRequest], route: BaseRoute):
        self.app, self.schema, self.route = app, schema, route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST"
                and _is_json(scope) and "state" in scope):  # fmt: skip
            await self.app(scope, receive, send)
            return
        try:
            body = await _read(receive)
        except HTTPException as exc:  # e.g. 413 from the body limit
            await http_error_response(exc)(scope, receive, send)
            return
        if body is None:  # the client went away
            return
        try:
            request = self.schema.model_validate(json.loads(body))
        except (ValueError, ValidationError, RecursionError):  # FastAPI answers these
            await self.app(scope, _replay(body, receive), send)
            return
        scope["route"] = self.route
        services: Any = scope["state"]["services"]
        try:
            engine = services.holder.require()
            response = JSONBody(await services.batcher.recall(engine, [request]))
        except ServiceError as exc:
            response = error_response(exc.code, exc.message, exc.headers)
        await response(scope, receive, send)


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


async def _read(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` that hands out ``body`` once, then whatever the connection says."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
