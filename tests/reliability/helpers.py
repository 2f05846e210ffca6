"""Processes the reliability tests start and stop themselves: a Redis server on a free port (to
take the broker away and bring it back) and the API as a uvicorn subprocess (to kill -9 it)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import pytest

from tests.api.helpers import free_port
from tests.preloaded_launcher import ForkedProcess, Launcher
from tests.service_fixtures import PROJECT_ROOT


class RedisServer:
    """``redis-server`` on 127.0.0.1:``port`` without persistence; stop() and start() again to
    play a broker outage (the same port, so clients configured for it reconnect)."""

    def __init__(self, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        import redis

        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping()
                return self
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
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
    ``python -m uvicorn`` with the same arguments, instead of importing the API stack again."""

    def __init__(self, env: Mapping[str, str], log_path: Path, *, workers: int = 1,
                 launcher: Launcher | None = None, uvicorn_args: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        #: ``Authorization`` header of a key made by :meth:`authorize` (empty until then).
        self.headers: dict[str, str] = {}
        arguments = ["--factory", "api.main:create_app", "--host", "127.0.0.1", "--port",
                     str(self.port), "--log-level", "warning", "--workers", str(workers),
                     *uvicorn_args]
        full = {**os.environ, "OMP_NUM_THREADS": "1", **env}
        self.process: subprocess.Popen[bytes] | ForkedProcess
        if launcher is not None:
            self.process = launcher.spawn(["uvicorn", *arguments], full, PROJECT_ROOT, log_path,
                                          module="uvicorn")
            return
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", *arguments], cwd=PROJECT_ROOT, env=full,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 60.0) -> ApiProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the API exited:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code < 500:
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
