"""A shared validator socket for a test (``VALIDATION_SOCKET``), stopping its server, and
validator servers forked from the test process's preloaded launcher (``validator_launch``)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.preloaded_launcher import Launcher
from validator.server_lock import server_pid

if TYPE_CHECKING:  # a plugin of every test process: the API's modules load where used
    from api.validation import ServerLauncher, ServerProcess

#: How long a forked validator server may take to say ``ready`` (its spares' warm-up included).
FORKED_START_TIMEOUT_S = 120.0


def forked_launch(launcher: Launcher) -> ServerLauncher:
    """A :data:`api.validation.ServerLauncher` that forks ``python -m validator`` from
    ``launcher`` (the worker one: torch and the library imported already) instead of starting
    a fresh interpreter that imports them again (seconds). The same server program runs, in its
    own process and session; it only finds its imports done. Its stdout goes to a file, read
    until its first line; its stderr to a file beside the launcher's log."""
    def launch(args: Sequence[str], env: Mapping[str, str],
               cwd: Path) -> tuple[ServerProcess, bytes]:
        stem = launcher.log_path.with_name(f"validator-{uuid.uuid4().hex[:12]}")
        out, err = stem.with_suffix(".out"), stem.with_suffix(".err")
        process = launcher.spawn(["validator", *args], env, cwd, err, module="validator",
                                 stdout=out, stderr=err)
        deadline = time.monotonic() + FORKED_START_TIMEOUT_S
        line = b""
        while time.monotonic() < deadline:
            text = out.read_bytes() if out.exists() else b""
            if b"\n" in text:
                line = text.split(b"\n", 1)[0].strip()
                break
            # A shared server's first process exits (status 0) as soon as it has forked the
            # server, which prints its line later: only a failure ends the wait early.
            if process.poll() not in (None, 0):
                break
            time.sleep(0.02)
        out.unlink(missing_ok=True)  # the server writes nothing more there
        return process, line

    return launch


@pytest.fixture(scope="session")
def validator_launch(request: pytest.FixtureRequest) -> ServerLauncher:
    """How the tests that make their own ``Validator`` start its server: forked from the worker
    launcher (see :func:`forked_launch`), or a fresh interpreter when
    ``RIFT_TEST_FORK_WORKERS=0``. The default path (``launch_subprocess``) stays tested by the
    tests that do not take this fixture."""
    from api.validation import launch_subprocess

    launcher: Launcher | None = request.getfixturevalue("optional_worker_launcher")
    return launch_subprocess if launcher is None else forked_launch(launcher)


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
