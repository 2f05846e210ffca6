"""Nothing of a private validator server outlives the API that started it (README "Uploads and
validation"): an API closed (lifespan shutdown, SIGTERM) or killed (SIGKILL) while its server
still imports torch and warms up its spares leaves no process behind. Was: the server went on
with its start, holding the API's stderr open, and only exited once it was ready; a pytest
session that ended ~1.7 s after an app started waited on it.

Real processes throughout: a fresh ``python -m validator`` interpreter, whose torch import is the
window in which each test stops its API."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Set
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.validation import Validator
from persistence.db import session_factory_from_settings
from persistence.settings import Settings
from tests.preloaded_launcher import Launcher
from tests.reliability.helpers import ApiProcess
from tests.shared_validator import wait_until

pytestmark = [pytest.mark.service]

#: How long a stopped server and its children may take to be gone: its watcher's poll, with room
#: for a loaded machine; a server left to its start takes seconds (torch's import alone).
GONE_WITHIN_S = 3.0


def _processes() -> dict[int, tuple[int, list[str]]]:
    """pid → (parent pid, argv) of the live processes (zombies left out)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if stat[0] != "Z":
            found[int(entry.name)] = (int(stat[1]), argv)
    return found


def _validator_sockets(parent: int) -> set[str]:
    """The socket paths of the validator servers that process ``parent`` started."""
    return {argv[argv.index("--socket") + 1] for ppid, argv in _processes().values()
            if ppid == parent and "validator" in argv and "--socket" in argv}


def _validator_socket_of(parent: int, besides: Set[str] = frozenset(),
                         timeout: float = 60.0) -> str:
    """The socket path of the validator server that process ``parent`` started, other than
    those of ``besides`` (servers it ran before: this test process may hold the private server
    of an earlier test's API)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = _validator_sockets(parent) - besides
        if started:
            assert len(started) == 1, started
            return started.pop()
        time.sleep(0.05)
    raise AssertionError(f"process {parent} started no validator server")


def _holding(socket_path: str) -> list[int]:
    """The live processes started for ``socket_path``: the server and its forked children."""
    return [pid for pid, (_, argv) in _processes().items() if socket_path in argv]


def _assert_all_gone(socket_path: str) -> None:
    try:
        wait_until(lambda: not _holding(socket_path), f"every process of {socket_path} to exit",
                   timeout=GONE_WITHIN_S)
    finally:
        for pid in _holding(socket_path):  # never leave one running for the next tests
            os.kill(pid, signal.SIGKILL)


def test_closing_while_the_server_starts_stops_it_at_once(tmp_path: Path) -> None:
    validator = Validator(Settings(store_root=tmp_path))  # type: ignore[call-arg]
    before = _validator_sockets(os.getpid())
    validator.start()
    socket_path = _validator_socket_of(os.getpid(), before)
    time.sleep(0.3)  # well inside its torch import
    assert validator.state() == "starting"
    began = time.monotonic()
    validator.close()
    assert time.monotonic() - began < GONE_WITHIN_S + 1
    # close() returned: the server is gone already, not still importing.
    assert not _holding(socket_path)
    _assert_all_gone(socket_path)
    assert not Path(socket_path).parent.exists()


def test_an_app_shut_down_right_after_its_start_leaves_no_server(
        reliability_settings: Settings) -> None:
    sessions = session_factory_from_settings(reliability_settings)
    try:
        app = create_app(reliability_settings, session_factory=sessions)
        before = _validator_sockets(os.getpid())
        with TestClient(app) as client:  # the lifespan starts the validator in the background
            assert client.get("/healthz").status_code == 200
            socket_path = _validator_socket_of(os.getpid(), before)
        # The lifespan has ended: its server with it.
        assert not _holding(socket_path)
    finally:
        sessions.kw["bind"].dispose()
    _assert_all_gone(socket_path)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_an_api_stopped_or_killed_while_its_server_starts_leaves_nothing(
        reliability_settings: Settings, optional_api_launcher: Launcher | None, tmp_path: Path,
        signum: signal.Signals) -> None:
    env = {"DATABASE_URL": reliability_settings.database_url, "BROKER_URL": "memory://",
           "STORE_ROOT": str(reliability_settings.store_root)}
    api = ApiProcess(env, tmp_path / "api.log", launcher=optional_api_launcher).wait_ready()
    try:
        socket_path = _validator_socket_of(api.process.pid)
        assert _holding(socket_path)
        api.process.send_signal(signum)
        api.process.wait(timeout=30)
    finally:
        api.kill()
    _assert_all_gone(socket_path)
    # Killed, the API could not remove the server's folder: the server did.
    assert not Path(socket_path).parent.exists()
