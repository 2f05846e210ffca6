"""A worker process's registry row (worker/registry.py): the heartbeat thread registers it,
renews it, survives a database that fails, and deletes it on stop; and the live workers gauge of
worker/metrics.py. On a real migrated SQLite database (the real worker processes are checked in
tests/worker/test_tasks.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from sqlalchemy.orm import Session

from persistence import workers
from persistence.models import Worker, utcnow
from persistence.settings import Settings
from rift.device import visible_devices
from worker.metrics import WorkerMetrics
from worker.registry import WorkerRegistration, local_devices
from worker.runtime import WorkerResources

BEAT = 0.05


@pytest.fixture
def resources(sqlite_url: str, tmp_path: Path) -> Iterator[WorkerResources]:
    settings = Settings(database_url=sqlite_url, store_root=tmp_path / "objects",
                        work_dir=tmp_path / "work", worker_heartbeat_seconds=BEAT,
                        worker_device="cpu")
    yield WorkerResources(settings)


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(BEAT / 2)


def worker_row(resources: WorkerResources) -> Worker | None:
    with resources.session() as session:
        return session.get(Worker, resources.worker_id)


def test_local_devices_counts_what_torch_sees() -> None:
    devices = local_devices()
    assert devices["cpu"] == 1
    assert devices.get("cuda", 0) == visible_devices("cuda")
    assert all(count > 0 for count in devices.values())


def test_the_heartbeat_registers_renews_and_stop_deletes(resources: WorkerResources) -> None:
    registration = WorkerRegistration(resources, queues=lambda: ["rift", "a-queue"],
                                      devices=lambda: {"cpu": 1, "cuda": 2})
    registration.start()
    registration.start()  # once per process
    wait_for(lambda: worker_row(resources) is not None)
    first = worker_row(resources)
    assert first is not None
    assert (first.queues, first.devices, first.device_override) == (
        ["a-queue", "rift"], {"cpu": 1, "cuda": 2}, "cpu")
    wait_for(lambda: (row := worker_row(resources)) is not None
             and row.last_seen_at > first.last_seen_at)
    registration.stop()
    assert worker_row(resources) is None
    registration.stop()  # nothing left to do


def test_a_failing_heartbeat_is_logged_and_retried(resources: WorkerResources,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    real_session = resources.session
    failures = {"left": 3}

    def flaky_session() -> Session:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise OSError("database unreachable")
        return real_session()

    resources.session = flaky_session  # type: ignore[method-assign]
    registration = WorkerRegistration(resources, queues=lambda: ["rift"],
                                      devices=lambda: {"cpu": 1})
    with caplog.at_level(logging.WARNING, logger="worker.registry"):
        registration.start()
        wait_for(lambda: failures["left"] == 0 and worker_row(resources) is not None)
    assert sum("heartbeat failed" in r.message for r in caplog.records) == 3
    # The row removed behind its back (the janitor, after an outage): the next beat re-registers.
    with real_session() as session:
        session.delete(session.get_one(Worker, resources.worker_id))
        session.commit()
    wait_for(lambda: worker_row(resources) is not None)
    registration.stop()
    assert worker_row(resources) is None


def test_worker_metrics_count_the_live_workers_by_queue(resources: WorkerResources) -> None:
    with resources.session() as session:
        for worker_id, queues in (("a:1:aa", ["rift", "rift-webhooks"]), ("b:2:bb", ["rift"])):
            workers.register_worker(session, workers.WorkerInfo(
                id=worker_id, hostname="h", queues=queues, devices={"cpu": 1},
                device_override=None, started_at=utcnow()))
    page = generate_latest(WorkerMetrics(resources, lambda queue: 0).registry).decode()
    assert 'rift_workers_live{queue="rift"} 2.0' in page
    assert 'rift_workers_live{queue="rift-webhooks"} 1.0' in page
