"""GuardedProtocol on a fake transport: under overload a /v1 request is answered 503 from its
head, its body dropped and the connection kept; other routes and calm times reach the app."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from service.errors import Code, ServiceError
from service.protocol import guarded_protocol
from service.settings import ConnectionSettings


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written, self.closed = b"", False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8000) if name in ("sockname", "peername") else default

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Batcher:
    def __init__(self) -> None:
        self.refusing = True

    def refusal(self) -> ServiceError | None:
        if not self.refusing:
            return None
        return ServiceError(Code.OVERLOADED, "over capacity", {"Retry-After": "1"})


async def answered(transport: Transport) -> None:
    """Until the app's answer is written (each turn of the loop runs the ASGI task on)."""
    for _ in range(10_000):
        if b"ok" in transport.written:
            return
        await asyncio.sleep(0)
    raise AssertionError("the app never answered")


def test_overload_is_answered_from_the_head_and_calm_requests_reach_the_app() -> None:
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def run() -> tuple[Transport, Batcher]:
        config = uvicorn.Config(app, lifespan="off")
        batcher = Batcher()
        state = {"services": type("Services", (), {"batcher": batcher})()}
        protocol_class = guarded_protocol(ConnectionSettings(), 100)
        protocol = protocol_class(config=config, server_state=ServerState(), app_state=state)
        transport = Transport()
        protocol.connection_made(transport)
        body = json.dumps({"user_id": "1"}).encode()
        post = (b"POST /v1/recall HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)) + body  # fmt: skip
        protocol.data_received(post)
        assert b" 503 " in transport.written.split(b"\r\n")[0]
        assert (
            b'"code":"overloaded"' in transport.written and b"retry-after: 1" in transport.written
        )
        assert calls == [] and not transport.closed  # kept alive: the body was dropped
        transport.written = b""
        protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # not a /v1 route
        await answered(transport)
        batcher.refusing = False
        transport.written = b""
        protocol.data_received(post)
        await answered(transport)
        protocol.connection_lost(None)
        return transport, batcher

    asyncio.run(run())
    assert calls == ["/healthz", "/v1/recall"]
