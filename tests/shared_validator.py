"""A shared validator socket for a test (``VALIDATION_SOCKET``), and stopping its server."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from validator.server_lock import server_pid


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A shared socket path (short: a Unix socket path has at most 107 bytes); its server is
    stopped after the test."""
    folder = Path(tempfile.mkdtemp(prefix="rv-"))
    path = folder / "validator.sock"
    yield path
    stop_shared_server(path)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def session_socket_path() -> Iterator[Path]:
    """A shared socket path for the API processes of this test process whose tests are not
    about the validator: the server the first upload starts (detached, as in production with
    ``VALIDATION_SOCKET``) checks the uploads of every later one too, one torch import per test
    process instead of one per API process. Stopped at the end of the session."""
    folder = Path(tempfile.mkdtemp(prefix="rvs-"))
    path = folder / "validator.sock"
    yield path
    stop_shared_server(path)
    shutil.rmtree(folder, ignore_errors=True)


def stop_shared_server(path: Path) -> None:
    """SIGTERM the server of ``path``, if one runs, and wait until it has exited."""
    pid = server_pid(path)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: process_gone(pid), "the shared server to exit")


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie that nobody reaped yet counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
