"""Two uvicorn worker processes with ``VALIDATION_SOCKET``: uploads through either are checked by
one validator server, and neither worker starts a private one."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import small_cnn_file  # noqa: F401  (fixture)
from tests.preloaded_launcher import Launcher
from tests.reliability.helpers import ApiProcess
from validator.server_lock import server_pid

pytestmark = pytest.mark.service


def _validator_servers() -> dict[int, int]:
    """pid → parent pid of every running ``python -m validator`` server."""
    servers = {}
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            continue
        if b"validator" in command and b"--socket" in command and stat[0] != "Z":
            servers[int(entry.name)] = int(stat[1])
    return servers


def _api_processes(api: ApiProcess) -> set[int]:
    """uvicorn's supervisor and its worker processes (its process group)."""
    group = os.getpgid(api.process.pid)
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == group:
                    pids.add(int(entry.name))
            except ProcessLookupError:
                continue
    return pids


def test_uvicorn_workers_share_one_validator_server(
    postgres_url: str, tmp_path: Path, socket_path: Path,
    small_cnn_file: Path,  # noqa: F811
    optional_api_launcher: Launcher | None,
) -> None:
    env = {"DATABASE_URL": postgres_url, "BROKER_URL": "memory://", "STORE_KIND": "local",
           "STORE_ROOT": str(tmp_path / "objects"), "WORK_DIR": str(tmp_path / "work"),
           "VALIDATION_SOCKET": str(socket_path)}
    api = ApiProcess(env, tmp_path / "api.log", workers=2, launcher=optional_api_launcher)
    try:
        api.wait_ready().authorize(env)
        assert len(_api_processes(api)) >= 3  # the supervisor and two workers
        content = small_cnn_file.read_bytes()

        def upload(index: int) -> httpx.Response:
            return httpx.post(f"{api.url}/v1/checkpoints",
                              params={"filename": f"m{index}.safetensors"}, content=content,
                              timeout=120,
                              headers={**api.headers, "Content-Type": "application/octet-stream"})

        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(upload, range(6)))
        assert [response.status_code for response in responses] == [201] * 6, api.log()[-3000:]
        servers = _validator_servers()
        shared = server_pid(socket_path)
        assert shared in servers
        # No worker started a private server of its own (those are the workers' children).
        assert not {pid for pid, parent in servers.items()
                    if parent in _api_processes(api)}, servers
    finally:
        api.kill()
