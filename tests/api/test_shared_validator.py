"""One validator server for every API process of a host (``VALIDATION_SOCKET``): processes that
start at once find or start the same server, the concurrency bound holds for the host, the
server outlives the process that started it, stops when idle or on SIGTERM without dropping a
check, and a dead one is replaced."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from api.errors import ServiceUnavailable
from api.validation import ServerLauncher, Validator
from persistence.settings import Settings
from tests.shared_validator import wait_until
from validator.server_lock import server_alive, server_pid

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MakeShared = Callable[..., Validator]


@pytest.fixture
def make_shared(socket_path: Path, validator_launch: ServerLauncher) -> MakeShared:
    """``make_shared(**settings)``: a Validator of the test's shared socket, whose server is
    forked from the worker launcher (the first test's processes start theirs as the API does)."""
    def make(**overrides: object) -> Validator:
        return Validator(Settings(validation_socket=str(socket_path), **overrides),  # type: ignore[arg-type]
                         launch=validator_launch)

    return make


def counting_connections(validator: Validator) -> threading.Semaphore:
    """Released each time ``validator`` has connected to its server. The server admits
    connections in the order they were made and, on SIGTERM, still serves those made before."""
    made = threading.Semaphore(0)
    connect = validator._connect

    def connect_and_count() -> socket.socket:
        connection = connect()
        made.release()
        return connection

    validator._connect = connect_and_count  # type: ignore[method-assign]
    return made


def _overlapping(spans: list[tuple[float, float]]) -> int:
    """The largest number of spans alive at one instant."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    alive = peak = 0
    for _, change in events:
        alive += change
        peak = max(peak, alive)
    return peak


_PROBE_IN_ANOTHER_PROCESS = """
import json, sys
from api.validation import ServerLauncher, Validator
from persistence.settings import Settings
validator = Validator(Settings(validation_socket=sys.argv[1], validation_max_concurrency=1))
print(json.dumps(validator.probe(sleep_seconds=0.4)))
"""


def test_api_processes_started_at_once_share_one_server_and_its_bound(socket_path: Path,
                                                                      tmp_path: Path) -> None:
    # Three processes standing for three uvicorn workers, each with its first upload at once.
    # Output to files: the server the first of them starts keeps their stderr (that is where
    # its own messages go), so pipes would stay open after the processes exit.
    processes = []
    for index in range(3):
        with open(tmp_path / f"out-{index}", "wb") as out, open(tmp_path / f"err-{index}",
                                                                 "wb") as err:
            processes.append(subprocess.Popen(
                [sys.executable, "-c", _PROBE_IN_ANOTHER_PROCESS, str(socket_path)],
                cwd=PROJECT_ROOT, stdout=out, stderr=err,
                env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}))
    probes = []
    for index, process in enumerate(processes):
        assert process.wait(timeout=120) == 0, (tmp_path / f"err-{index}").read_text()
        probes.append(json.loads((tmp_path / f"out-{index}").read_text()))
    servers = {probe["server_pid"] for probe in probes}
    assert servers == {server_pid(socket_path)}
    # VALIDATION_MAX_CONCURRENCY=1 held across the processes: the checks ran one at a time.
    assert _overlapping([(probe["started"], probe["finished"]) for probe in probes]) == 1
    # The server outlived every process that used it, the one that started it included.
    assert server_alive(socket_path)


def test_a_full_host_answers_busy_naming_the_limit(make_shared: MakeShared) -> None:
    first = make_shared(validation_max_concurrency=1, validation_queue_timeout_seconds=0.3)
    second = make_shared(validation_max_concurrency=1, validation_queue_timeout_seconds=0.3)
    # The server up first: a check waits for its start at most the queue timeout too.
    first.start()
    assert first.wait_ready(120) == "ready"
    # The second check connects once the first one's connection is made: the server admits
    # connections in order, so the first holds the slot. (A fixed 0.5 s let the second go first
    # when a loaded machine started the holder's thread late, and it then found the slot free.)
    made = counting_connections(first)
    holder = threading.Thread(target=first.probe, kwargs={"sleep_seconds": 2.0})
    holder.start()
    try:
        assert made.acquire(timeout=60)
        with pytest.raises(ServiceUnavailable, match="VALIDATION_MAX_CONCURRENCY") as caught:
            second.probe()
        assert caught.value.code == "validation_busy"
        assert "all 1 validation slots" in caught.value.message
    finally:
        holder.join()


def test_the_server_outlives_its_starter_and_stops_when_idle(
    make_shared: MakeShared, socket_path: Path
) -> None:
    starter = make_shared(validation_idle_exit_seconds=1.5)
    server = starter.probe()["server_pid"]
    starter.close()  # the API process that started it is shutting down
    assert make_shared().probe()["server_pid"] == server
    # Idle for 1.5 s: it removes its socket and lets its lock go.
    wait_until(lambda: not server_alive(socket_path), "the idle server to stop")
    assert not socket_path.exists()
    replacement = make_shared().probe()["server_pid"]
    assert replacement != server


def test_sigterm_serves_the_checks_already_waiting(make_shared: MakeShared,
                                                  socket_path: Path) -> None:
    validator = make_shared(validation_max_concurrency=1)
    server = validator.probe()["server_pid"]
    made = counting_connections(validator)
    results: list[dict[str, object]] = []
    threads = [threading.Thread(target=lambda: results.append(validator.probe(sleep_seconds=0.5)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    # All three connected (one check runs, two wait for the slot), waited for: after a fixed
    # 0.3 s a thread started late connected after the SIGTERM, to another server.
    for _ in threads:
        assert made.acquire(timeout=60)
    os.kill(server, signal.SIGTERM)
    for thread in threads:
        thread.join()
    assert len(results) == 3
    assert {result["server_pid"] for result in results} == {server}
    wait_until(lambda: not server_alive(socket_path), "the stopped server to let its lock go")


def test_a_killed_server_is_replaced(make_shared: MakeShared, socket_path: Path) -> None:
    validator = make_shared()
    server = validator.probe()["server_pid"]
    os.kill(server, signal.SIGKILL)
    wait_until(lambda: not server_alive(socket_path), "the killed server's lock to go")
    assert socket_path.exists()  # it had no chance to remove its socket
    assert validator.probe()["server_pid"] not in (server, None)


def test_a_socket_folder_others_may_write_to_or_a_long_path_is_refused(tmp_path: Path) -> None:
    open_folder = tmp_path / "open"
    open_folder.mkdir()
    open_folder.chmod(0o777)
    with pytest.raises(ValueError, match=r"VALIDATION_SOCKET.*writable by no one else"):
        Validator(Settings(validation_socket=str(open_folder / "validator.sock")))
    with pytest.raises(ValueError, match=r"VALIDATION_SOCKET.*longer than"):
        Validator(Settings(validation_socket="/tmp/" + "x" * 120 + "/validator.sock"))
    created = tmp_path / "run" / "rift"
    Validator(Settings(validation_socket=str(created / "validator.sock")))
    assert created.stat().st_mode & 0o777 == 0o700


def test_started_ahead_the_host_server_is_found_or_started_once(make_shared: MakeShared,
                                                                socket_path: Path) -> None:
    # Two API processes starting at once (uvicorn --workers 2), neither with an upload yet.
    first, second = make_shared(), make_shared()
    first.start()
    second.start()
    assert first.wait_ready(120) == "ready" and second.wait_ready(120) == "ready"
    server = server_pid(socket_path)
    assert server is not None
    assert first.probe()["server_pid"] == second.probe()["server_pid"] == server


def test_a_server_still_starting_without_its_starter_is_waited_for(make_shared: MakeShared,
                                                                   socket_path: Path) -> None:
    # An API process killed during its warm start leaves the server it launched starting
    # alone: it holds the lock before it listens. Here the test holds that lock, with no
    # socket. The next process must wait for it, not call it ready and fail the upload (503).
    from validator.server_lock import ServerLock

    lock = ServerLock.acquire(socket_path)
    assert lock is not None and not socket_path.exists()
    validator = make_shared()
    validator.start()
    time.sleep(0.5)
    assert validator.state() == "starting"
    lock.release()  # it stopped before serving: the waiting process starts one itself
    assert validator.wait_ready(120) == "ready"
    assert validator.probe()["server_pid"] == server_pid(socket_path)
    validator.close()
