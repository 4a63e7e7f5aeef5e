"""The hot routes without FastAPI's per-request machinery, for requests that validate.

``POST /v1/recall``: a JSON body is parsed and validated exactly as FastAPI would
(``json.loads``, then the route's own pydantic schema). ``POST /v1/recall/batch``: the same
with pydantic's JSON parser (``model_validate_json``: a big batch costs the event loop about
half as long). ``GET /v1/items/{item_id}/similar``:
the path parameter and a ``k`` query parameter are checked against the same limits as the
route's. Valid requests go to the batcher, are rendered with orjson, and their route is
recorded in the scope for the metrics. Anything else, another route, another content type,
a body, path or query that does not validate, goes to the app unchanged (body replayed), so
every error still comes from FastAPI's handlers and the OpenAPI spec is the routes' own.
Routing, dependency solving and the exception wrappers were about a third of the CPU of a
cached recall and half of a similar-items call (README "Performance").
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import JSONBody, ServiceError, error_response, http_error_response
from service.schemas import BatchRecallRequest, RecallRequest
from service.settings import Limits

PATH = "/v1/recall"
BATCH_PATH = "/v1/recall/batch"
SIMILAR_PATH = "/v1/items/{item_id}/similar"
_SIMILAR = re.compile(r"/v1/items/([^/]+)/similar")
_DIGITS = re.compile(r"[0-9]{1,9}")


class RecallFastPath:
    """ASGI middleware answering valid recall and similar-items requests itself."""

    def __init__(
        self,
        app: ASGIApp,
        schema: type[RecallRequest],
        route: BaseRoute,
        similar_route: BaseRoute,
        limits: Limits,
        batch_schema: type[BatchRecallRequest],
        batch_route: BaseRoute,
    ):
        self.app, self.schema, self.route = app, schema, route
        self.similar_route, self.limits = similar_route, limits
        self.batch_schema, self.batch_route = batch_schema, batch_route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or "state" not in scope:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "GET" and scope["path"].endswith("/similar"):
            await self._similar(scope, receive, send)
            return
        path = scope["path"]
        if not (path in (PATH, BATCH_PATH) and scope["method"] == "POST" and _is_json(scope)):
            await self.app(scope, receive, send)
            return
        if await _refused(scope, receive, send):
            return
        try:
            body = await _read(receive)
        except HTTPException as exc:  # e.g. 413 from the body limit
            await http_error_response(exc)(scope, receive, send)
            return
        if body is None:  # the client went away
            return
        try:
            if path == PATH:
                request = self.schema.model_validate(json.loads(body))
            else:  # pydantic's own JSON parser: a 600 kB batch in one pass, half the time
                batch = self.batch_schema.model_validate_json(body)
        except (ValueError, ValidationError, RecursionError):  # FastAPI answers these
            await self.app(scope, _replay(body, receive), send)
            return
        if path == PATH:
            scope["route"] = self.route
            await _answer(
                scope, receive, send, lambda batcher, engine: batcher.recall(engine, [request])
            )
            return
        scope["route"] = self.batch_route

        async def answer_batch(batcher: Any, engine: Any) -> Any:
            return {"results": await batcher.recall(engine, batch.requests, True)}

        await _answer(scope, receive, send, answer_batch)

    async def _similar(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _SIMILAR.fullmatch(scope["path"])
        k = self._k(scope["query_string"])
        if match is None or k is None or len(match[1]) > self.limits.max_string_length:
            await self.app(scope, receive, send)  # FastAPI answers (404, 422, ...)
            return
        if await _refused(scope, receive, send):
            return
        scope["route"] = self.similar_route
        item_id = match[1]
        await _answer(
            scope, receive, send, lambda batcher, engine: batcher.similar(engine, item_id, k)
        )

    def _k(self, query: bytes) -> int | None:
        """``k`` from the query string when it is the only parameter and a plain in-range
        integer (absent: the default); None for anything FastAPI should judge."""
        if not query:
            return self.limits.default_k
        try:
            pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            return None
        if len(pairs) != 1 or pairs[0][0] != "k" or not _DIGITS.fullmatch(pairs[0][1]):
            return None
        k = int(pairs[0][1])
        return k if 1 <= k <= self.limits.max_k else None


async def _answer(
    scope: Scope, receive: Receive, send: Send, call: Callable[[Any, Any], Awaitable[Any]]
) -> None:
    """Send ``call(batcher, engine)``'s body as JSON, or the error shape of a ServiceError."""
    services: Any = scope["state"]["services"]
    try:
        response = JSONBody(await call(services.batcher, services.holder.require()))
    except ServiceError as exc:
        response = error_response(exc.code, exc.message, exc.headers)
    await response(scope, receive, send)


async def _refused(scope: Scope, receive: Receive, send: Send) -> bool:
    """Answer 503 ``overloaded`` before the body is read when the batcher is past a bound."""
    refusal = scope["state"]["services"].batcher.refusal()
    if refusal is None:
        return False
    await error_response(refusal.code, refusal.message, refusal.headers)(scope, receive, send)
    return True


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
