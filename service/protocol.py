"""GuardedProtocol: uvicorn's httptools protocol with limits on what one connection may hold.

uvicorn bounds none of these by default, and each was measured to hurt other callers:

- **Head size**: the request line and headers may be at most ``max_url_bytes`` +
  ``max_header_bytes``; bytes are counted before they reach the parser (httptools joins a long
  header value chunk by chunk, quadratic in its size: a 64 MB header cost 8.8 s of CPU). Past
  the URL bound 414 ``uri_too_long``, past the header bound 431 ``header_too_large``.
- **Slow clients**: the head must arrive within ``header_timeout_s`` of the connection (or of
  the first byte of the next request on a kept-alive one) and the body within
  ``body_timeout_s`` of the head, else 408 ``request_timeout`` and the connection closes.
  uvicorn's own keep-alive timeout (``keep_alive_s``) closes connections idle between requests.
- **Connections**: at most ``max_connections`` (and never more than the process's file limit
  allows). At the cap a new connection first evicts the oldest one that has no request being
  answered (idle, or still sending its head); when there is none it gets 503
  ``too_many_connections`` and is closed, so slow connections never lock out new callers.
- **Overload**: while the batcher refuses work (``RecallBatcher.refusal``), a /v1 request is
  answered 503 ``overloaded`` from its head, before any ASGI work or body parse.
- **Shutdown**: on SIGTERM a connection still sending its body is answered 503
  ``shutting_down`` at once instead of holding the graceful shutdown for its whole grace.

Every refusal is written in the service's one error body (``service.errors``), including the
parser's own 400 for a malformed request.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import STATUS, Code, error_bytes
from service.settings import ConnectionSettings

log = logging.getLogger(__name__)
FILE_RESERVE = 64  # descriptors kept for snapshots, Redis, logs and the listening socket


def raise_file_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(settings: ConnectionSettings, file_limit: int) -> int:
    """``max_connections``, lowered so that the connections fit in the file limit."""
    room = max(file_limit - FILE_RESERVE, 1)
    if settings.max_connections > room:
        log.warning(
            "max_connections %d lowered to %d: the open-file limit is %d",
            settings.max_connections, room, file_limit,
        )  # fmt: skip
    return min(settings.max_connections, room)


def guarded_protocol(settings: ConnectionSettings, cap: int) -> type[HttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    return type(
        "GuardedProtocol",
        (GuardedProtocol,),
        {"limits": settings, "cap": cap},
    )


class GuardedProtocol(HttpToolsProtocol):
    limits: ConnectionSettings = ConnectionSettings()
    cap: int = ConnectionSettings().max_connections

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._in_head = True  # between the start of a request and its last header
        self._head_bytes = 0
        self._refused = False
        self._shedding = False  # the current request was answered 503 from its head
        self._deadline: tuple[float, float, str] | None = None  # (loop time, seconds, what)
        self._since = time.monotonic()

    # --- connection --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.cap and not self._evict_one():
            self._refuse(Code.TOO_MANY_CONNECTIONS, f"the server holds {self.cap} connections")
            return
        self._arm(self.limits.header_timeout_s, "the request head")

    def _evict_one(self) -> bool:
        """Close the oldest other connection that has no request being answered."""
        idle = [
            c
            for c in self.connections
            if c is not self
            and isinstance(c, GuardedProtocol)
            and not c._refused
            and (c.cycle is None or c.cycle.response_complete)
        ]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c._since)
        if oldest.cycle is not None:  # idle between requests: close it, as keep-alive allows
            oldest._refused = True
            oldest._disarm()
            oldest.transport.close()
        else:  # still sending its head
            oldest._refuse(Code.TOO_MANY_CONNECTIONS, "closed to make room for a new connection")
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._in_head:
            super().data_received(data)
            return
        # A chunk may hold the end of a head and the start of its body: parse it, then refuse
        # when the head is still not over (the parser has seen at most one chunk too many).
        self._head_bytes += len(data)
        super().data_received(data)
        head_limit = self.limits.max_url_bytes + self.limits.max_header_bytes
        if self._in_head and not self._refused and self._head_bytes > head_limit:
            self._refuse(Code.HEADER_TOO_LARGE, self._header_message())

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            self._refuse(Code.BAD_REQUEST, msg)

    # --- parser callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        if self._deadline is None:
            self._arm(self.limits.header_timeout_s, "the request head")

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_url_bytes:
            self._refuse(Code.URI_TOO_LONG, self._url_message())
            raise _Refused

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        # the bytes received so far bound the head: only a big one is measured header by header
        big = self._head_bytes > self.limits.max_header_bytes
        if big and sum(len(n) + len(v) + 4 for n, v in self.headers) > self.limits.max_header_bytes:
            self._refuse(Code.HEADER_TOO_LARGE, self._header_message())
            raise _Refused
        if self._shed_here():
            return
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.more_body:
            self._arm(self.limits.body_timeout_s, "the request body")

    def _shed_here(self) -> bool:
        """Under overload, answer a /v1 request 503 from its head alone: no ASGI task, no body
        parse. The app's refusal costs a third of an answered request; this about a tenth,
        which is what lets the loop keep up with twice the rate it can answer."""
        if not self.url.startswith(b"/v1/") or (self.cycle and not self.cycle.response_complete):
            return False  # not a recall route, or a pipelined request behind one in flight
        services = self.app_state.get("services")
        refusal = services.batcher.refusal() if services is not None else None
        if refusal is None:
            return False
        self._shedding = True  # its body, if any, is parsed and dropped
        self.transport.write(error_bytes(refusal.code, refusal.message, _shed_headers(refusal)))
        if not self.parser.should_keep_alive():
            self.transport.close()
        return True

    def on_body(self, body: bytes) -> None:
        if not self._shedding:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head, self._head_bytes = True, 0  # what comes next is the next request's head
        if self._shedding:
            self._shedding = False
            self._arm(self.limits.keep_alive_s, "the next request")  # idle: closed silently
            return
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._since = time.monotonic()

    # --- shutdown ----------------------------------------------------------------------------
    def shutdown(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_started:
            self._refuse(Code.SHUTTING_DOWN, "the server is shutting down; send the request again")
            cycle.disconnected = True
            cycle.message_event.set()
            return
        super().shutdown()

    # --- helpers -----------------------------------------------------------------------------
    def _arm(self, seconds: float, what: str) -> None:
        """Set this connection's deadline. No timer per request (a timer armed and cancelled
        twice a request cost the loop ~15% of a cached recall's CPU): one sweep per server
        checks every connection's deadline a few times per shortest timeout."""
        self._deadline = (self.loop.time() + seconds, seconds, what)
        state: Any = self.server_state
        if getattr(state, "guard_sweep", None) is None:
            limits = self.limits
            period = max(0.02, min(limits.header_timeout_s, limits.body_timeout_s,
                                   limits.keep_alive_s) / 4)  # fmt: skip
            loop = self.loop

            def sweep() -> None:
                now = loop.time()
                for connection in list(state.connections):
                    deadline = getattr(connection, "_deadline", None)
                    if deadline is not None and deadline[0] <= now:
                        connection._deadline = None
                        connection._timed_out(deadline[1], deadline[2])
                state.guard_sweep = loop.call_later(period, sweep)

            state.guard_sweep = loop.call_later(period, sweep)

    def _disarm(self) -> None:
        self._deadline = None

    def _timed_out(self, seconds: float, what: str) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            return  # the app is answering
        if self._head_bytes == 0 and self._in_head and (cycle is None or cycle.response_complete):
            self._refused = True  # nothing sent at all: close without an answer
            if not self.transport.is_closing():
                self.transport.close()
            return
        self._refuse(Code.REQUEST_TIMEOUT, f"{what} did not arrive within {seconds:g} s")
        if cycle is not None:
            cycle.disconnected = True
            cycle.message_event.set()

    def _refuse(self, code: str, message: str) -> None:
        """Answer ``code`` in the error body and close the connection."""
        self._refused = True
        self._disarm()
        if self.transport.is_closing():
            return
        headers = {"connection": "close"}
        if STATUS[code] == 503:
            headers["retry-after"] = "1"
        self.transport.write(error_bytes(code, message, headers))
        self.transport.close()

    def _url_message(self) -> str:
        limit = self.limits.max_url_bytes
        return f"the URL is over {limit} bytes (RECALL_CONNECTIONS__MAX_URL_BYTES)"

    def _header_message(self) -> str:
        limit = self.limits.max_header_bytes
        return f"the request headers are over {limit} bytes (RECALL_CONNECTIONS__MAX_HEADER_BYTES)"


def _shed_headers(refusal: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in (refusal.headers or {}).items()}


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a refused request."""
