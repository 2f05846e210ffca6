"""A worker process's registry row (worker/registry.py): the heartbeat thread registers it,
renews it, survives a database that fails, and deletes it on stop; it says which built-in
datasets the worker's DATA_ROOT holds, and again when they change; and the live workers gauge of
worker/metrics.py. On a real migrated SQLite database (the real worker processes are checked in
tests/worker/test_tasks.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from sqlalchemy.orm import Session

from persistence import workers
from persistence.models import Worker, utcnow
from persistence.settings import Settings
from rift.data_root import DATA_ROOT_FILES
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


def place(data_root: Path, name: str) -> None:
    """The files of the built-in dataset ``name`` under ``data_root`` (empty: the registry only
    looks for them)."""
    for relative in DATA_ROOT_FILES[name]:
        (data_root / relative).parent.mkdir(parents=True, exist_ok=True)
        (data_root / relative).touch()


def datasets_resources(sqlite_url: str, tmp_path: Path, check_seconds: float) -> WorkerResources:
    return WorkerResources(Settings(
        database_url=sqlite_url, store_root=tmp_path / "objects", work_dir=tmp_path / "work",
        data_root=tmp_path / "data", worker_heartbeat_seconds=BEAT,
        worker_datasets_check_seconds=check_seconds))


def renewed_since(resources: WorkerResources, seen: datetime) -> bool:
    row = worker_row(resources)
    return row is not None and row.last_seen_at > seen


def beats(resources: WorkerResources, count: int) -> Worker:
    """The row after ``count`` more heartbeats renewed it."""
    row = worker_row(resources)
    for _ in range(count):
        assert row is not None
        wait_for(partial(renewed_since, resources, row.last_seen_at))
        row = worker_row(resources)
    assert row is not None
    return row


def test_the_row_says_which_datasets_data_root_holds_and_follows_changes(
        sqlite_url: str, tmp_path: Path) -> None:
    resources = datasets_resources(sqlite_url, tmp_path, check_seconds=0)
    place(tmp_path / "data", "cifar10")
    place(tmp_path / "data", "svhn")
    (tmp_path / "data" / DATA_ROOT_FILES["svhn"][1]).unlink()  # half a dataset is none
    registration = WorkerRegistration(resources, queues=lambda: ["rift"],
                                      devices=lambda: {"cpu": 1})
    registration.start()
    try:
        wait_for(lambda: worker_row(resources) is not None)
        assert beats(resources, 0).datasets == ["cifar10"]
        # Copied in while the worker runs: seen at a later heartbeat, without a restart.
        place(tmp_path / "data", "mnist")
        wait_for(lambda: (row := worker_row(resources)) is not None
                 and row.datasets == ["cifar10", "mnist"])
        (tmp_path / "data" / DATA_ROOT_FILES["cifar10"][0]).unlink()
        wait_for(lambda: (row := worker_row(resources)) is not None
                 and row.datasets == ["mnist"])
    finally:
        registration.stop()


def test_the_datasets_are_looked_at_again_only_after_the_check_period(
        sqlite_url: str, tmp_path: Path) -> None:
    resources = datasets_resources(sqlite_url, tmp_path, check_seconds=3600)
    (tmp_path / "data").mkdir()
    registration = WorkerRegistration(resources, queues=lambda: ["rift"],
                                      devices=lambda: {"cpu": 1})
    registration.start()
    try:
        wait_for(lambda: worker_row(resources) is not None)
        place(tmp_path / "data", "mnist")
        # Heartbeats go on; the hour has not passed, so the folder is not looked at again.
        assert beats(resources, 3).datasets == []
    finally:
        registration.stop()
