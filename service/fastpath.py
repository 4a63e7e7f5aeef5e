"""The hot routes without FastAPI's per-request machinery, for requests that validate.

``POST /v1/recall``: a JSON body is parsed and validated exactly as FastAPI would
(``json.loads``, then the route's own pydantic schema). ``POST /v1/recall/batch``: the same,
one request of the batch at a time (``batch_elements``: json's own scanner on one element),
with a yield to the loop every ``PARSE_CHARS`` characters, so a big batch (64 requests of
1,000 exclusions: 636 kB, ~40 ms parsed whole) never holds the loop for more than a few of
them. ``GET /v1/items/{item_id}/similar``:
the path parameter and a ``k`` query parameter are checked against the same limits as the
route's. Valid requests go to the batcher, are rendered with orjson, and their route is
recorded in the scope for the metrics. Anything else, another route, another content type,
a body, path or query that does not validate, goes to the app unchanged (body replayed), so
every error still comes from FastAPI's handlers and the OpenAPI spec is the routes' own.
Routing, dependency solving and the exception wrappers were about a third of the CPU of a
cached recall and half of a similar-items call (README "Performance").
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import (
    JSONBody,
    ServiceError,
    batch_body,
    error_response,
    http_error_response,
)
from service.schemas import BatchRecallRequest, RecallRequest
from service.settings import Limits

PATH = "/v1/recall"
BATCH_PATH = "/v1/recall/batch"
SIMILAR_PATH = "/v1/items/{item_id}/similar"
_SIMILAR = re.compile(r"/v1/items/([^/]+)/similar")
_DIGITS = re.compile(r"[0-9]{1,9}")
_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace
_DECODER = json.JSONDecoder()  # json.loads' own, so a request parses as FastAPI parses it
PARSE_CHARS = 32_768  # of a batch body, parsed and validated between yields to the loop


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
        if path == PATH:
            try:
                request = self.schema.model_validate(json.loads(body))
            except (ValueError, ValidationError, RecursionError):  # FastAPI answers these
                await self.app(scope, _replay(body, receive), send)
                return
            scope["route"] = self.route
            await _answer(
                scope, receive, send, lambda batcher, engine: batcher.recall(engine, [request])
            )
            return
        batch = await self._batch(body)
        if batch is None:  # FastAPI parses the whole body and answers
            await self.app(scope, _replay(body, receive), send)
            return
        scope["route"] = self.batch_route

        async def answer_batch(batcher: Any, engine: Any) -> Any:
            return batch_body(await batcher.recall(engine, batch.requests, True))

        await _answer(scope, receive, send, answer_batch)

    async def _batch(self, body: bytes) -> BatchRecallRequest | None:
        """The batch, validated request by request with yields to the loop in between; None
        for a body that is anything but a valid batch."""
        requests: list[RecallRequest] = []
        try:
            text, parsed = body.decode("utf-8"), 0
            for element, end in batch_elements(text):
                if len(requests) == self.limits.max_batch:
                    return None
                requests.append(self.schema.model_validate(element))
                if end - parsed >= PARSE_CHARS:
                    parsed = end
                    await asyncio.sleep(0)
        except (ValueError, ValidationError, RecursionError):
            return None
        # each request validated by the batch's own element schema; its only other rule
        # is the length checked here
        return self.batch_schema.model_construct(requests=requests) if requests else None

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


def batch_elements(text: str) -> Iterator[tuple[Any, int]]:
    """The elements of a ``{"requests": [...]}`` document one by one, each with the offset
    where it ends, parsed by json's scanner (``raw_decode``) one element at a time. Raises
    ValueError (mid-way, perhaps) for any other document: another or a second key, an
    element that is not JSON, data after the end."""

    def skip(at: int) -> int:
        return _SPACE.match(text, at).end()  # type: ignore[union-attr]  # always matches

    def expect(at: int, char: str) -> int:
        if text[at : at + 1] != char:
            raise ValueError(f"expected {char!r} at character {at}")
        return skip(at + 1)

    key, at = _DECODER.raw_decode(text, expect(skip(0), "{"))
    if key != "requests":
        raise ValueError("not a batch")
    at = expect(expect(skip(at), ":"), "[")
    if text[at : at + 1] != "]":
        while True:
            element, at = _DECODER.raw_decode(text, at)
            yield element, at
            at = skip(at)
            if text[at : at + 1] != ",":
                break
            at = skip(at + 1)
    if skip(expect(expect(at, "]"), "}")) != len(text):
        raise ValueError("data after the batch")


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
