"""The closed set of error kinds, their HTTP status, and the one error body.

Every error answers ``{"error": {"code": ..., "message": ...}}``; ``install`` registers the
handlers that turn FastAPI's own errors into that shape. Unexpected exceptions are caught by
``service.metrics.RequestMiddleware``, which logs the stack and answers ``internal``.
"""

from __future__ import annotations

import http
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from index_builder.snapshot import Check, SnapshotError

# Every snapshot check (index_builder.manifest.Check): a reload that fails one answers 409.
SNAPSHOT_CHECKS = tuple(check.value for check in Check if check is not Check.BAD_VERSION)
STATUS: dict[str, int] = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "admin_disabled": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "no_previous_snapshot": 409,
    **dict.fromkeys(SNAPSHOT_CHECKS, 409),
    "request_timeout": 408,
    "payload_too_large": 413,
    "uri_too_long": 414,
    "unsupported_media_type": 415,
    "validation_error": 422,
    "header_too_large": 431,
    "unknown_feature": 422,
    "unknown_filter": 422,
    "bad_version": 422,
    "http_error": 400,
    "internal": 500,
    "no_snapshot": 503,
    "overloaded": 503,
    "too_many_connections": 503,
    "shutting_down": 503,
}
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large",
               415: "unsupported_media_type", 422: "validation_error"}  # fmt: skip
_MAX_LISTED = 5  # validation problems listed in one message


class ServiceError(Exception):
    """An error with a code from ``STATUS``; the status follows from the code."""

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None):
        assert code in STATUS, f"unregistered error code {code!r}"
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
