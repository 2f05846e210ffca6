"""A worker started where it cannot work stops before taking a message, with one line saying why:
a ``WORKER_DEVICE`` this host lacks, a database schema behind the code's. Real ``celery worker``
processes on the test's Postgres and Redis."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from persistence.migrate import downgrade_database
from persistence.schema import MIGRATE_COMMAND
from tests.service_fixtures import WorkerProcess
from worker.preflight import count_devices

EXIT_TIMEOUT_S = 120.0


def stopped_with(worker: WorkerProcess) -> str:
    """The one ``rift:`` line of a worker that must have exited with status 1."""
    assert worker.process.wait(timeout=EXIT_TIMEOUT_S) == 1, worker.log()[-3000:]
    lines = [line for line in worker.log().splitlines() if line.startswith("rift: ")]
    assert len(lines) == 1, worker.log()[-3000:]
    assert " ready." not in worker.log()
    return lines[0]


def test_a_device_this_host_lacks(start_worker: Callable[..., WorkerProcess]) -> None:
    if count_devices("cuda") > 0:
        pytest.skip("this host has a CUDA device")
    line = stopped_with(start_worker(wait=False, WORKER_DEVICE="cuda:1"))
    assert line == ("rift: WORKER_DEVICE='cuda:1', but this host has 0 cuda devices: run the "
                    "worker where that device is, or set WORKER_DEVICE to one it has (or leave "
                    "it unset)")


def test_an_older_schema(postgres_url: str, start_worker: Callable[..., WorkerProcess]) -> None:
    downgrade_database(postgres_url, "0012")
    line = stopped_with(start_worker(wait=False))
    assert "schema is at migration 0012" in line and MIGRATE_COMMAND in line


def test_a_device_it_has_starts(start_worker: Callable[..., WorkerProcess]) -> None:
    start_worker(WORKER_DEVICE="cpu")  # waits until ready
