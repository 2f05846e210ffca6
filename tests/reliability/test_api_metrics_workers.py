"""``GET /metrics`` of a real ``uvicorn --workers 2`` API with ``PROMETHEUS_MULTIPROC_DIR``: a
scrape lands on either process and must still count every request of both, and never less than
the scrape before (``rate()`` reads a decrease as a counter reset), even after a worker process
died and uvicorn started another."""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from api.multiprocess_metrics import reset_directory
from tests.preloaded_launcher import Launcher
from tests.reliability.helpers import ApiProcess

pytestmark = pytest.mark.service

ROUTE_SERIES = re.compile(
    r'^rift_http_requests_total\{(?=[^}]*method="GET")(?=[^}]*route="/v1/jobs")'
    r'(?=[^}]*status="401")[^}]*\} (\S+)$', re.MULTILINE)


def _counted(api: ApiProcess) -> float:
    """``rift_http_requests_total`` of unauthorized ``GET /v1/jobs`` in one scrape, over a
    connection of its own (so each scrape may reach either process)."""
    page = httpx.get(f"{api.url}/metrics", headers={"Connection": "close"}, timeout=10).text
    return sum(float(value) for value in ROUTE_SERIES.findall(page))


def _send(api: ApiProcess, count: int) -> None:
    def one(_: int) -> int:  # a connection each: the kernel hands them to either process
        return httpx.get(f"{api.url}/v1/jobs", headers={"Connection": "close"},
                         timeout=10).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(count))) == {401}


def _workers(api: ApiProcess) -> set[int]:
    """The live worker processes uvicorn's supervisor started (not its resource tracker)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            continue
        if stat[0] != "Z" and int(stat[1]) == api.process.pid and b"spawn_main" in command:
            pids.add(int(entry.name))
    return pids


def test_scrapes_count_every_workers_requests_and_never_decrease(
    postgres_url: str, tmp_path: Path, optional_api_launcher: Launcher | None,
) -> None:
    metrics_dir = tmp_path / "metrics"
    reset_directory(metrics_dir)  # as the start command's preflight does
    env = {"DATABASE_URL": postgres_url, "BROKER_URL": "memory://", "STORE_KIND": "local",
           "STORE_ROOT": str(tmp_path / "objects"), "WORK_DIR": str(tmp_path / "work"),
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    api = ApiProcess(env, tmp_path / "api.log", workers=2, launcher=optional_api_launcher)
    try:
        api.wait_ready()
        first = 60
        _send(api, first)
        seen = [_counted(api) for _ in range(10)]
        assert seen == [first] * 10, seen
        # Both processes served some of them (else this would prove nothing about summing).
        assert len(list(metrics_dir.glob("counter_*.db"))) == 2

        assert len(_workers(api)) == 2
        killed = min(_workers(api))
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(_workers(api) - {killed}) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        api.wait_ready()
        second = 20
        _send(api, second)
        after = [_counted(api) for _ in range(10)]
        # The dead process's requests are still counted: the totals never went down.
        assert after == [first + second] * 10, after
    finally:
        api.kill()
