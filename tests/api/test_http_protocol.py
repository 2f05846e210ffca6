"""What uvicorn refuses before the app runs (:mod:`api.http_protocol`): an unparsable request, a
request head past its bound, answered in the API's JSON; over raw sockets against the test app
served by the protocols the image runs."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn

from api.http_protocol import H11Protocol, HttpToolsProtocol
from api.main import create_app
from api.validation import Validator
from persistence.db import session_factory_from_settings
from persistence.settings import Settings
from tests.api.helpers import RecordingDispatcher
from tests.ports import listening_socket

pytestmark = [pytest.mark.service,
              pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

LIMIT = 16 * 1024


@pytest.fixture
def serve(api_settings: Settings, shared_validator: Validator) -> Iterator[Callable[[type], int]]:
    """``serve(protocol_class) -> port``: the test app under uvicorn with that protocol and a
    16 KiB head limit."""
    servers: list[tuple[uvicorn.Server, threading.Thread, socket.socket]] = []

    def start(protocol: type) -> int:
        app = create_app(api_settings, session_factory=session_factory_from_settings(api_settings),
                         dispatcher=RecordingDispatcher(), validator=shared_validator)
        # Bound and listening before uvicorn runs: no window for another process to take it.
        listener = listening_socket()
        server = uvicorn.Server(uvicorn.Config(
            app, log_level="error", lifespan="on", http=protocol,
            h11_max_incomplete_event_size=LIMIT))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        servers.append((server, thread, listener))
        return int(listener.getsockname()[1])

    yield start
    for server, thread, listener in servers:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()


def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` and read until the server closes (or 5 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        # The server may refuse and close while the request is still being sent.
        with contextlib.suppress(OSError):
            sock.sendall(request)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return received


def answers(raw: bytes) -> list[tuple[int, dict[str, str], Any]]:
    """The responses in ``raw`` (Content-Length framed): status, headers, JSON body."""
    found = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", len(rest)))
        body, raw = rest[:length], rest[length:]
        found.append((int(lines[0].split()[1]), headers, json.loads(body) if body else None))
    return found


def get(path: str, extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n" + extra + b"\r\n"


@pytest.mark.parametrize("protocol", [HttpToolsProtocol, H11Protocol])
def test_an_unparsable_request_is_answered_in_json(serve: Callable[[type], int],
                                                   protocol: type) -> None:
    port = serve(protocol)
    # Before: 400 "Invalid HTTP request received." as text/plain.
    [(status, headers, body)] = answers(exchange(port, b"GET / HTTP/1.1\r\nHost t\r\n\r\n"))
    assert status == 400 and headers["content-type"] == "application/json"
    assert body["error"]["code"] == "invalid_http_request" and body["error"]["field"] is None
    assert "HTTP/1.1" in body["error"]["message"]


def test_a_head_past_the_limit_is_a_431_naming_it(serve: Callable[[type], int]) -> None:
    port = serve(HttpToolsProtocol)
    # Before (httptools): headers of any size were buffered; a 64 KiB URL a plain-text 400.
    for request in (get("/healthz", b"X-Big: " + b"a" * (LIMIT + 10) + b"\r\n"),
                    get("/v1/jobs?status=" + "q" * 70_000)):
        [(status, headers, body)] = answers(exchange(port, request))
        assert status == 431 and headers["content-type"] == "application/json"
        assert body["error"]["code"] == "request_head_too_large"
        assert body["error"]["limit_bytes"] == LIMIT and str(LIMIT) in body["error"]["message"]
    # Under the limit, and a body sent with its head (not head bytes), pass; the count starts
    # again with each request of a kept-alive connection.
    half = b"X-Half: " + b"a" * (LIMIT // 2) + b"\r\n"
    body = b"{" + b" " * (LIMIT * 4) + b"}"
    post = (b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    got = answers(exchange(port, get("/healthz", half) + get("/healthz", half) + post
                           + get("/healthz", b"Connection: close\r\n")))
    assert [status for status, _, _ in got] == [200, 200, 405, 200]
