"""A 1 GiB checkpoint upload through real HTTP grows no process by more than 100 MB.

The API runs as a uvicorn subprocess (Postgres, local object store); its memory high-water mark
(VmHWM in /proc/<pid>/status) and that of its validator server are read after a small warm-up
upload and again after the big one. The checkpoint is checked in a child forked by the validator
server, which reports its own VmHWM (at its start and at its end) in the API's log line for the
check. All three growths are bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from persistence.db import session_factory_from_settings
from tests.api.helpers import make_key
from tests.ports import PortTaken, on_a_free_port, says_port_taken
from tests.service_fixtures import settings_from_env

pytestmark = [pytest.mark.slow, pytest.mark.service]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: The uploaded checkpoint's size: one float32 tensor of zeros, written sparse (instant).
CHECKPOINT_BYTES = 1024**3
#: Allowed growth of each process's VmHWM over its idle baseline.
MAX_GROWTH_BYTES = 100 * 1024**2
_LOG_LINE = re.compile(r"validation checkpoint: peak RSS (\d+) kB \(at start (\d+) kB\)")

# The app logs each check's memory itself (JSON lines, LOG_LEVEL INFO by default).
_SERVER = (
    "import sys, uvicorn\n"
    "uvicorn.run('api.main:create_app', factory=True, host='127.0.0.1', port=int(sys.argv[1]),"
    " log_level='warning')\n"
)


def sparse_safetensors(path: Path, size: int) -> int:
    """Write a valid safetensors file of about ``size`` bytes, one F32 tensor of zeros (a sparse
    file), to ``path``; returns the tensor's number of elements."""
    def header_for(count: int) -> bytes:
        text = json.dumps({"w": {"dtype": "F32", "shape": [count],
                                 "data_offsets": [0, 4 * count]}}).encode()
        return text + b" " * (-len(text) % 8)

    header = header_for(0)
    count = (size - 8 - len(header) - 16) // 4  # the header grows by a few digits
    header = header_for(count)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        handle.truncate(8 + len(header) + 4 * count)
    return count


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def child_pids(pid: int) -> list[int]:
    """The processes ``pid``'s threads started (the validator server, once a check has run)."""
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def file_chunks(path: Path, size: int = 1024**2) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(size):
            yield chunk


@pytest.fixture
def api_process(postgres_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    log = tmp_path / "api.log"
    env = {**os.environ, "DATABASE_URL": postgres_url, "BROKER_URL": "memory://",
           "STORE_KIND": "local", "STORE_ROOT": str(tmp_path / "objects"),
           "WORK_DIR": str(tmp_path / "work"), "MAX_CHECKPOINT_BYTES": str(2 * CHECKPOINT_BYTES)}
    processes: list[subprocess.Popen[bytes]] = []

    def start(port: int) -> tuple[subprocess.Popen[bytes], str, Path]:
        with log.open("wb") as sink:
            process = subprocess.Popen([sys.executable, "-c", _SERVER, str(port)],
                                       cwd=PROJECT_ROOT, env=env, stdout=sink,
                                       stderr=subprocess.STDOUT)
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                if says_port_taken(log.read_text(errors="replace")):
                    raise PortTaken(f"the API: port {port} is taken")
                raise AssertionError(log.read_text()[-3000:])
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    return process, url, log
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.2)

    try:
        yield on_a_free_port(start)  # a fresh port if another process took the first
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_one_gib_checkpoint_upload_grows_no_process_by_more_than_100_mb(
    api_process: tuple[subprocess.Popen[bytes], str, Path], postgres_url: str, tmp_path: Path
) -> None:
    sessions = session_factory_from_settings(settings_from_env({"DATABASE_URL": postgres_url}))
    try:
        _, api_key = make_key(sessions, "tests")
    finally:
        sessions.kw["bind"].dispose()
    process, url, log = api_process
    with httpx.Client(base_url=url, timeout=300,
                      headers={"Authorization": f"Bearer {api_key}"}) as client:
        small = tmp_path / "small.safetensors"
        sparse_safetensors(small, 1024**2)
        warm_up = client.post("/v1/checkpoints", params={"filename": "small.safetensors"},
                              content=small.read_bytes(),
                              headers={"content-type": "application/octet-stream"})
        assert warm_up.status_code == 201, warm_up.text
        api_baseline = peak_rss_bytes(process.pid)
        servers = child_pids(process.pid)
        assert len(servers) == 1, servers  # the validator server
        server_baseline = peak_rss_bytes(servers[0])

        big = tmp_path / "big.safetensors"
        count = sparse_safetensors(big, CHECKPOINT_BYTES)
        answer = client.post("/v1/checkpoints", params={"filename": "big.safetensors"},
                             content=file_chunks(big),
                             headers={"content-type": "application/octet-stream"})
    assert answer.status_code == 201, answer.text
    assert answer.json()["size"] == big.stat().st_size > CHECKPOINT_BYTES - 4096
    assert answer.json()["num_parameters"] == count

    api_growth = peak_rss_bytes(process.pid) - api_baseline
    server_growth = peak_rss_bytes(servers[0]) - server_baseline
    checks = [(int(end), int(start)) for end, start in _LOG_LINE.findall(log.read_text())]
    assert len(checks) == 2, log.read_text()[-3000:]
    validator_end, validator_start = (kb * 1024 for kb in checks[-1])
    validator_growth = validator_end - validator_start
    print(json.dumps({"api_baseline_mb": api_baseline / 2**20, "api_growth_mb": api_growth / 2**20,
                      "server_baseline_mb": server_baseline / 2**20,
                      "server_growth_mb": server_growth / 2**20,
                      "validator_start_mb": validator_start / 2**20,
                      "validator_growth_mb": validator_growth / 2**20}))
    assert api_growth <= MAX_GROWTH_BYTES, api_growth
    assert server_growth <= MAX_GROWTH_BYTES, server_growth
    assert validator_growth <= MAX_GROWTH_BYTES, validator_growth
