"""Processes the reliability tests start and stop themselves: a Redis server on a free port (to
take the broker away and bring it back) and the API as a uvicorn subprocess (to kill -9 it)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import pytest

from tests.ports import PORT_ATTEMPTS, PortTaken, free_port, on_a_free_port, says_port_taken
from tests.preloaded_launcher import ForkedProcess, Launcher
from tests.service_fixtures import PROJECT_ROOT


class RedisServer:
    """``redis-server`` on 127.0.0.1:``port`` without persistence; stop() and start() again to
    play a broker outage (the same port, so clients configured for it reconnect). Without a
    ``port`` the first start() picks a free one, and a fresh one again if another process took
    it before redis-server bound it (redis-server cannot bind port 0 and say which it got)."""

    def __init__(self, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        assert self.port is not None, "start() the server first: it picks the port"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        if self.port is None:
            return on_a_free_port(self._start_on)
        return self._start_on(self.port)  # a restart keeps the port its clients know

    def _start_on(self, port: int) -> RedisServer:
        import redis

        self.port = port
        # Its output is read only if it exits (the reason); the file goes when both close it.
        with tempfile.TemporaryFile() as output:
            process = self.process = subprocess.Popen(
                [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no"], stdout=output, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 10
            while True:
                try:
                    with redis.Redis.from_url(self.url, socket_connect_timeout=0.5,
                                              socket_timeout=1) as client:
                        answering = client.info("server")["process_id"]
                    # Its own pid: not another test's redis-server holding the port.
                    if answering == process.pid:
                        return self
                except redis.exceptions.RedisError:  # not up yet, or not a Redis answering
                    pass
                if process.poll() is not None:
                    output.seek(0)
                    said = output.read().decode(errors="replace")
                    self.process = None
                    if says_port_taken(said):
                        raise PortTaken(f"redis-server: port {port} is taken:\n{said[-2000:]}")
                    raise RuntimeError(f"redis-server exited on port {port}:\n{said[-2000:]}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on port {port}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


class ApiProcess:
    """``uvicorn --factory api.main:create_app`` in its own process (its own session), with
    ``env`` over this process's environment; output in ``log_path``. With a ``launcher`` (the
    torch-free one of ``optional_api_launcher``) the process is forked from it, as
    ``python -m uvicorn`` with the same arguments, instead of importing the API stack again.
    ``port`` and ``url`` are final once :meth:`wait_ready` returns: if another process took the
    port before uvicorn bound it, wait_ready starts it again on a fresh one."""

    def __init__(self, env: Mapping[str, str], log_path: Path, *, workers: int = 1,
                 launcher: Launcher | None = None, uvicorn_args: Sequence[str] = ()) -> None:
        self.log_path = log_path
        #: ``Authorization`` header of a key made by :meth:`authorize` (empty until then).
        self.headers: dict[str, str] = {}
        self._options = ["--log-level", "warning", "--workers", str(workers), *uvicorn_args]
        self._env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
        self._launcher = launcher
        self.process: subprocess.Popen[bytes] | ForkedProcess
        self._launch(free_port())

    def _launch(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        arguments = ["--factory", "api.main:create_app", "--host", "127.0.0.1", "--port",
                     str(port), *self._options]
        self.log_path.unlink(missing_ok=True)  # a relaunch's log is read alone
        if self._launcher is not None:
            self.process = self._launcher.spawn(["uvicorn", *arguments], self._env, PROJECT_ROOT,
                                                self.log_path, module="uvicorn")
            return
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", *arguments], cwd=PROJECT_ROOT, env=self._env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 60.0) -> ApiProcess:
        deadline = time.monotonic() + timeout
        relaunches = PORT_ATTEMPTS - 1
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if relaunches > 0 and says_port_taken(self.log()):
                    relaunches -= 1
                    self._launch(free_port())
                    continue
                raise RuntimeError(f"the API exited:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code < 500 and \
                        self.process.poll() is None:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the API did not start:\n{self.log()[-3000:]}")

    def authorize(self, env: Mapping[str, str]) -> ApiProcess:
        """Make a read/write key of project 'tests' in the API's database and send it from now on."""
        from persistence.db import session_factory_from_settings
        from tests.api.helpers import make_key
        from tests.service_fixtures import settings_from_env

        sessions = session_factory_from_settings(settings_from_env(env))
        try:
            _, key = make_key(sessions, "tests")
        finally:
            sessions.kw["bind"].dispose()
        self.headers = {"Authorization": f"Bearer {key}"}
        return self

    def kill(self) -> None:
        """SIGKILL to its process group (uvicorn and its worker processes): no cleanup handler,
        no finally block runs."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def inside_one_rate_window(needed_s: float = 15.0) -> None:
    """Wait, if need be, until the current rate window (wall-clock minutes: the limiters count
    in fixed windows) has ``needed_s`` left, so a test's requests are all counted in one."""
    left = 60.0 - time.time() % 60.0
    if left < needed_s:
        time.sleep(left + 0.05)
