"""The servers the tests start on a port of their own pick another one when theirs was taken
between ``free_port()`` and their bind (another xdist worker's server, or an outgoing
connection given the same ephemeral port): before, the start failed ("did not start", "the API
exited: address already in use") and the test went red with no fault of the product."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import tests.ports
from persistence.settings import Settings
from tests.ports import listening_socket
from tests.preloaded_launcher import Launcher
from tests.reliability.helpers import ApiProcess, RedisServer

pytestmark = [pytest.mark.service]


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A port held by this process (listening), handed out by the next ``free_port()`` as if
    the kernel had chosen it and someone took it right after; later calls are the real ones."""
    holder = listening_socket()
    real = tests.ports.free_port
    handed = iter([int(holder.getsockname()[1])])
    monkeypatch.setattr(tests.ports, "free_port", lambda: next(handed, None) or real())
    monkeypatch.setattr("tests.reliability.helpers.free_port", tests.ports.free_port)
    yield holder
    holder.close()


def test_redis_server_moves_off_a_taken_port(taken: socket.socket) -> None:
    server = RedisServer().start()
    try:
        import redis

        assert server.port != taken.getsockname()[1]
        with redis.Redis.from_url(server.url) as client:
            assert client.info("server")["process_id"] == server.process.pid  # type: ignore[union-attr]
    finally:
        server.stop()


def test_the_api_process_moves_off_a_taken_port(
        taken: socket.socket, reliability_settings: Settings,
        optional_api_launcher: Launcher | None, tmp_path: Path) -> None:
    env = {"DATABASE_URL": reliability_settings.database_url, "BROKER_URL": "memory://",
           "STORE_ROOT": str(reliability_settings.store_root), "VALIDATION_WARM_START": "false"}
    api = ApiProcess(env, tmp_path / "api.log", launcher=optional_api_launcher)
    try:
        api.wait_ready()
        assert api.port != taken.getsockname()[1]
        assert httpx.get(f"{api.url}/healthz", timeout=10).status_code == 200
    finally:
        api.kill()
