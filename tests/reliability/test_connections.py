"""Connection limits of a real `recall serve` over TCP: huge heads and URLs are refused while
still arriving, slow clients are timed out or evicted, and none of it stops other callers.

Every wait here is for something the server does (an answer, a closed socket, an exit); the
socket timeouts only bound how long a broken server may keep the test waiting.
"""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.integration.conftest import wait_until
from tests.reliability.conftest import Server, module_server

pytestmark = pytest.mark.slow
WAIT_S = 30.0  # the most a broken server may keep one socket waiting


server = module_server("connections")


@contextmanager
def connect(server: Server) -> Iterator[socket.socket]:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT_S)
    try:
        yield sock
    finally:
        sock.close()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one response; the server closes or sends Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed without a whole response: {data[:200]!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers = {k.lower(): v for k, v in headers.items()}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def error_code(body: bytes) -> str:
    parsed = json.loads(body)
    assert set(parsed) == {"error"} and set(parsed["error"]) == {"code", "message"}
    return str(parsed["error"]["code"])


def in_flight(server: Server) -> float:
    with server.client() as client:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith("recall_http_requests_in_flight "):
                return float(line.split()[1]) - 1  # less this /metrics request
    raise AssertionError("no recall_http_requests_in_flight in /metrics")


def healthy(server: Server) -> bool:
    with server.client() as client:
        return client.get("/healthz").status_code == 200


def test_a_huge_header_is_refused_431_before_it_is_read(server: Server) -> None:
    sent = 0
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        chunk = b"a" * 65536
        try:
            while sent < 64 << 20:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed it: what is left of 64 MB was never read
        status, headers, body = read_response(sock)
    assert status == 431 and error_code(body) == "header_too_large"
    assert sent < 32 << 20  # refused long before the end of the header
    assert healthy(server)


def test_a_header_over_the_bound_in_one_chunk_is_431(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        status, _, body = read_response(sock)
    assert status == 431 and error_code(body) == "header_too_large"


def test_a_huge_url_is_refused_414(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /v1/items/" + b"a" * 20_000 + b"/similar HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = read_response(sock)
    assert status == 414 and error_code(body) == "uri_too_long"
    assert healthy(server)


def test_a_malformed_request_gets_the_error_body(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, headers, body = read_response(sock)
    assert status == 400 and error_code(body) == "bad_request"
    assert headers["content-type"] == "application/json"


def start_slow(
    disjoint: tuple[Path, dict[str, str]], serve: Callable[..., Server], **env: str
) -> Server:
    settings = {f"RECALL_CONNECTIONS__{k.upper()}": v for k, v in env.items()}
    return serve(disjoint[0], **settings)


def test_slow_connections_are_evicted_for_new_callers(
    disjoint: tuple[Path, dict[str, str]], serve: Callable[..., Server]
) -> None:
    server = start_slow(disjoint, serve, max_connections="16", header_timeout_s="600")
    with ExitStack() as stack:
        slow = [stack.enter_context(connect(server)) for _ in range(40)]
        for sock in slow:
            sock.sendall(b"POST /v1/recall HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        with server.client() as client:
            for user in range(1, 11):
                response = client.post("/v1/recall", json={"user_id": f"u{user}"})
                assert response.status_code == 200, response.text
        for sock in slow[:24]:  # the oldest were evicted to make room, in order
            status, _, body = read_response(sock)
            assert status == 503 and error_code(body) == "too_many_connections"


def test_a_slow_head_or_body_is_answered_408_and_an_idle_socket_closed(
    disjoint: tuple[Path, dict[str, str]], serve: Callable[..., Server]
) -> None:
    server = start_slow(disjoint, serve, header_timeout_s="0.5", body_timeout_s="0.5")
    with connect(server) as head, connect(server) as body, connect(server) as idle:
        head.sendall(b"POST /v1/recall HTTP/1.1\r\nHost: x\r\n")
        body.sendall(
            b"POST /v1/recall HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"user_id":'
        )
        for sock in (head, body):
            status, _, answer = read_response(sock)
            assert status == 408 and error_code(answer) == "request_timeout"
        assert idle.recv(1) == b""  # closed without an answer: it never asked anything
    assert healthy(server)


def test_sigterm_answers_slow_bodies_503_at_once_and_exits_0(
    disjoint: tuple[Path, dict[str, str]], serve: Callable[..., Server]
) -> None:
    server = serve(disjoint[0], RECALL_SHUTDOWN_GRACE_S="600",
                   RECALL_CONNECTIONS__BODY_TIMEOUT_S="600")  # fmt: skip
    with ExitStack() as stack:
        slow = [stack.enter_context(connect(server)) for _ in range(5)]
        for sock in slow:
            sock.sendall(
                b"POST /v1/recall HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
        wait_until(lambda: in_flight(server) >= 5, WAIT_S, "the five requests in flight")
        server.process.send_signal(signal.SIGTERM)
        for sock in slow:
            status, headers, body = read_response(sock)
            assert status == 503 and error_code(body) == "shutting_down"
            assert headers["retry-after"] == "1"
        # without the fix the process waits the whole 600 s grace for these bodies
        assert server.process.wait(WAIT_S) == 0
