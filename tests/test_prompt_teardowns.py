"""The tests' stand-in servers and workers end as soon as their test is over, and completely:
an in-process API (``tests/api/helpers.py``'s ``PromptServer``), a loopback HTTP stand-in
(``tests/quiet_http.py``) and a Celery worker at ``start_worker``'s teardown
(``WorkerProcess.discard``). Each of these waited 0.2 s, up to 0.5 s and 1.07 s before, at the
teardown of hundreds of tests."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
from fastapi import FastAPI

from tests.api.helpers import ApiServer
from tests.quiet_http import LoopbackServer
from tests.service_fixtures import WorkerProcess


def _lifespan_app(events: list[str]) -> FastAPI:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        events.append("startup")
        yield
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.get("/ping")
    def ping() -> dict[str, bool]:
        return {"pong": True}

    return app


def test_an_idle_api_server_stops_at_once_and_runs_the_apps_shutdown() -> None:
    # uvicorn's own stop waited a tick (up to 0.1 s) and then 0.1 s for connections, always.
    times = []
    for _ in range(3):
        events: list[str] = []
        server = ApiServer(_lifespan_app(events)).start()
        with httpx.Client(base_url=server.url) as client:
            assert client.get("/ping").json() == {"pong": True}
        started = time.monotonic()
        server.stop()
        times.append(time.monotonic() - started)
        assert not server.thread.is_alive()
        assert events == ["startup", "shutdown"]
    assert min(times) < 0.09, times


def test_an_api_server_with_a_connection_open_still_shuts_down_gracefully() -> None:
    events: list[str] = []
    server = ApiServer(_lifespan_app(events)).start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw:
        raw.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        # Headers and body may come in two segments (CI saw the headers alone in one recv).
        answer = b""
        while b"pong" not in answer:
            chunk = raw.recv(65536)
            assert chunk, answer
            answer += chunk
        server.stop()  # uvicorn's whole shutdown: the connection is closed for it
        assert not server.thread.is_alive()
        assert raw.recv(65536) == b""
    assert events == ["startup", "shutdown"]


def test_a_loopback_stand_in_stops_right_after_a_request() -> None:
    # socketserver polled for shutdown() every 0.5 s, the poll starting again after each request.
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    times = []
    for _ in range(3):  # the fastest of three: one stop may wait on a loaded machine's scheduler
        server = LoopbackServer(Handler)
        assert httpx.get(server.url).status_code == 204
        started = time.monotonic()
        server.stop()
        times.append(time.monotonic() - started)
    assert min(times) < 0.25, times


@pytest.mark.service
def test_a_worker_is_killed_at_once_with_its_process_group(
        start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker()
    started = time.monotonic()
    worker.discard()
    assert time.monotonic() - started < 0.9  # the polite stop of an idle worker: 1.07 s
    assert worker.process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(worker.pid, 0)  # nothing of its group is left
