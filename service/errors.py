"""The closed set of error kinds, their HTTP status, and the one error body.

Every error answers ``{"error": {"code": ..., "message": ...}}``; ``install`` registers the
handlers that turn FastAPI's own errors into that shape. Unexpected exceptions are caught by
``service.metrics.RequestMiddleware``, which logs the stack and answers ``internal``.
"""

from __future__ import annotations

import http
from enum import StrEnum
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from index_builder.snapshot import Check, SnapshotError

# Every snapshot check (index_builder.manifest.Check): a reload that fails one answers 409.
SNAPSHOT_CHECKS = tuple(check.value for check in Check if check is not Check.BAD_VERSION)


class Code(StrEnum):
    """The service's own error codes (snapshot checks are ``Check``)."""

    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    ADMIN_DISABLED = "admin_disabled"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TIMEOUT = "request_timeout"
    NO_PREVIOUS_SNAPSHOT = "no_previous_snapshot"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    URI_TOO_LONG = "uri_too_long"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    VALIDATION_ERROR = "validation_error"
    UNKNOWN_FEATURE = "unknown_feature"
    UNKNOWN_FILTER = "unknown_filter"
    HEADER_TOO_LARGE = "header_too_large"
    HTTP_ERROR = "http_error"
    INTERNAL = "internal"
    NO_SNAPSHOT = "no_snapshot"
    OVERLOADED = "overloaded"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    SHUTTING_DOWN = "shutting_down"
    FLEET_UNAVAILABLE = "fleet_unavailable"


# The one table of codes to HTTP statuses.
STATUS: dict[str, int] = {
    Code.BAD_REQUEST: 400,
    Code.HTTP_ERROR: 400,
    Code.UNAUTHORIZED: 401,
    Code.FORBIDDEN: 403,
    Code.ADMIN_DISABLED: 403,
    Code.NOT_FOUND: 404,
    Code.METHOD_NOT_ALLOWED: 405,
    Code.REQUEST_TIMEOUT: 408,
    Code.NO_PREVIOUS_SNAPSHOT: 409,
    **dict.fromkeys(SNAPSHOT_CHECKS, 409),
    Code.PAYLOAD_TOO_LARGE: 413,
    Code.URI_TOO_LONG: 414,
    Code.UNSUPPORTED_MEDIA_TYPE: 415,
    Code.VALIDATION_ERROR: 422,
    Code.UNKNOWN_FEATURE: 422,
    Code.UNKNOWN_FILTER: 422,
    Check.BAD_VERSION: 422,
    Code.HEADER_TOO_LARGE: 431,
    Code.INTERNAL: 500,
    Code.NO_SNAPSHOT: 503,
    Code.OVERLOADED: 503,
    Code.TOO_MANY_CONNECTIONS: 503,
    Code.FLEET_UNAVAILABLE: 503,
    Code.SHUTTING_DOWN: 503,
}
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large",
               415: "unsupported_media_type", 422: "validation_error"}  # fmt: skip
_MAX_LISTED = 5  # validation problems listed in one message


class ServiceError(Exception):
    """An error with a code from ``STATUS``; the status follows from the code."""

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None):
        if code not in STATUS:
            raise ValueError(f"unregistered error code {code!r}; add it to Code and STATUS")
        super().__init__(message)
        self.code, self.message, self.headers = code, message, headers

    @property
    def status(self) -> int:
        return STATUS[self.code]

    @classmethod
    def from_snapshot(cls, exc: SnapshotError) -> ServiceError:
        """A snapshot check failure: ``bad_version`` is 422, every other check 409."""
        code = str(exc.code)
        return cls(code if code in STATUS else Check.LOAD_FAILED, str(exc))


class JSONBody(Response):
    """A JSON response rendered by orjson (numpy scalars and arrays allowed)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def batch_body(parts: list[bytes]) -> dict[str, Any]:
    """A batch answer's content, ``{"results": [...]}``, around bodies rendered already
    (``RecallBatcher.recall(batch=True)``): rendering it copies them, nothing more."""
    return {"results": [orjson.Fragment(part) for part in parts]}


def error_bytes(code: str, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 response in the error body, for answers below the ASGI app
    (``service.protocol``)."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    status = STATUS[code]
    lines = [
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def error_response(code: str, message: str, headers: dict[str, str] | None = None) -> JSONBody:
    return JSONBody({"error": {"code": code, "message": message}}, STATUS[code], headers)


def validation_message(errors: Any) -> str:
    """``body.k: Input should be ...; body.history: ...`` naming each field by its path."""
    parts = []
    for err in list(errors)[:_MAX_LISTED]:
        path = ".".join(str(part) for part in err.get("loc", ())) or "body"
        parts.append(f"{path}: {err.get('msg', 'invalid')}")
    extra = len(list(errors)) - _MAX_LISTED
    return "; ".join(parts) + (f"; and {extra} more" if extra > 0 else "")


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return error_response(exc.code, exc.message, exc.headers)


def http_error_response(exc: HTTPException) -> JSONBody:
    """Starlette's HTTPException (404, 405, 413, ...) in the one error body."""
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    body = {"error": {"code": code, "message": str(exc.detail)}}
    return JSONBody(body, exc.status_code, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return http_error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response("validation_error", validation_message(exc.errors()))


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the one body."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
