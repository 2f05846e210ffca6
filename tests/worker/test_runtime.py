"""The stage reporter's batched reports and the materialization lease's heartbeat
(worker/runtime.py), on a real database."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs, materializations, models, stages
from persistence.models import JobStage, Materialization, utcnow
from persistence.settings import Settings
from persistence.stages import LeaseLost
from persistence.time_limits import TimeLimit
from tests.clock_skew import skewed_datetime
from tests.persistence.helpers import stage_row
from worker.runtime import MaterializationLease, StageReporter, WorkerResources

pytestmark = pytest.mark.service


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def reported(sessions: sessionmaker[Session], job_id: str
             ) -> tuple[list[tuple[str, Any]], str | None]:
    """The stage's events (kind, epoch) and the job's progress message."""
    with sessions() as session:
        events = [(e.kind, e.payload.get("epoch")) for e in jobs.list_events(session, job_id)
                  if e.kind in ("epoch", "warning")]
        return events, jobs.get_job(session, job_id).progress_message


def claimed_reporter(submit: Callable[..., str], sessions: sessionmaker[Session],
                     service_settings: Settings, quick_config: dict[str, Any], clock: Clock, *,
                     write_behind: bool = False) -> tuple[str, StageReporter]:
    job_id = submit(quick_config, send=False)
    settings = service_settings.model_copy(update={"progress_interval_seconds": 1.0})
    resources = WorkerResources(settings)
    with sessions() as session:
        stages.claim_stage(session, job_id, "mrc", owner=resources.worker_id, lease_seconds=60,
                           max_attempts=3)
    return job_id, StageReporter(resources, job_id, "mrc", clock, write_behind=write_behind)


def device_of(sessions: sessionmaker[Session], job_id: str) -> str | None:
    with sessions() as session:
        return jobs.get_job(session, job_id).device


def test_reports_are_written_in_order_at_most_once_per_interval(
        submit: Callable[..., str], sessions: sessionmaker[Session],
        service_settings: Settings, quick_config: dict[str, Any]) -> None:
    clock = Clock()
    job_id, reporter = claimed_reporter(submit, sessions, service_settings, quick_config, clock)

    reporter.on_event("epoch", {"epoch": 1})  # within the stage's first interval: waits
    reporter.on_event("epoch", {"epoch": 2})
    reporter.on_progress("mrc", 0.5, "half")
    reporter.set_device("cpu")
    assert reported(sessions, job_id) == ([], None)
    assert device_of(sessions, job_id) is None
    reporter.on_event("warning", {"message": "now"})  # a warning takes what waits along
    assert reported(sessions, job_id) == ([("epoch", 1), ("epoch", 2), ("warning", None)], "half")
    assert device_of(sessions, job_id) == "cpu"

    reporter.on_event("epoch", {"epoch": 3})
    reporter.on_progress("mrc", 1.0, "later")  # a finished progress waits too
    assert not reporter.should_cancel()  # within the interval: nothing written, nothing read
    assert reported(sessions, job_id)[1] == "half"
    with sessions() as session:
        jobs.request_cancel(session, job_id)
    assert not reporter.should_cancel()
    clock.now += 1.0
    assert reporter.should_cancel()  # an interval later: written, and the flag read after them
    assert reported(sessions, job_id) == (
        [("epoch", 1), ("epoch", 2), ("warning", None), ("epoch", 3)], "later")

    reporter.on_event("epoch", {"epoch": 4})
    reporter.flush()  # what a split stage's part does before recording itself
    assert reported(sessions, job_id)[0][-1] == ("epoch", 4)


def test_a_materialization_lease_taken_over_stops_its_evaluation(
        submit: Callable[..., str], sessions: sessionmaker[Session],
        service_settings: Settings, quick_config: dict[str, Any]) -> None:
    # The heartbeat renews the materialization's lease; once another worker holds it, the
    # evaluation's cancellation callback raises LeaseLost instead of letting it run on.
    job_id = submit(quick_config, send=False)
    settings = service_settings.model_copy(update={"worker_lease_seconds": 0.3})
    resources = WorkerResources(settings)
    with sessions() as session:
        row = Materialization(job_id=job_id, alpha=0.5, artifact_name="tuned@0.5.safetensors")
        session.add(row)
        session.commit()
        row_id = row.id
        assert materializations.start_materialization(
            session, row_id, owner=resources.worker_id, lease_seconds=0.3,
            max_attempts=3) is not None
    with sessions() as session:
        first = session.get_one(Materialization, row_id).lease_expires_at
    assert first is not None
    lease = MaterializationLease(resources, row_id)
    lease.start()
    try:
        # Renewed past the first lease's end: the heartbeat beat on (every 0.1 s) after it.
        # Waited for, not slept for: "not expired now" after a fixed 0.6 s fails whenever a
        # loaded machine keeps the heartbeat thread off the CPU for 0.3 s.
        eventually(lambda: expiry(sessions, row_id) > first + timedelta(seconds=0.3))
        with sessions() as session:
            assert session.get_one(Materialization, row_id).lease_owner == resources.worker_id
        assert not lease.should_cancel()
        with sessions() as session:
            session.execute(update(Materialization).where(Materialization.id == row_id)
                            .values(lease_owner="thief"))
            session.commit()
        deadline = time.monotonic() + 5.0
        while not lease.lease_lost:
            assert time.monotonic() < deadline, "the heartbeat never noticed"
            time.sleep(0.05)
        with pytest.raises(LeaseLost, match=f"materialization {row_id}"):
            lease.should_cancel()
    finally:
        lease.stop()


def expiry(sessions: sessionmaker[Session], row_id: str) -> datetime:
    with sessions() as session:
        expires = session.get_one(Materialization, row_id).lease_expires_at
    assert expires is not None
    return expires


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the timeout"
        time.sleep(0.02)


def test_write_behind_writes_on_its_thread_in_order_and_stops_at_take_pending(
        submit: Callable[..., str], sessions: sessionmaker[Session],
        service_settings: Settings, quick_config: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    job_id, reporter = claimed_reporter(submit, sessions, service_settings, quick_config, clock,
                                        write_behind=True)
    writers: list[str] = []
    report_activity = stages.report_activity

    def recording(*args: Any, **kwargs: Any) -> bool:
        writers.append(threading.current_thread().name)
        return report_activity(*args, **kwargs)

    monkeypatch.setattr(stages, "report_activity", recording)
    reporter.start()
    try:
        reporter.on_event("epoch", {"epoch": 1})
        reporter.set_device("cpu")
        reporter.on_event("warning", {"message": "now"})
        eventually(lambda: reported(sessions, job_id)[0] == [("epoch", 1), ("warning", None)])
        assert device_of(sessions, job_id) == "cpu"
        assert writers and all(name.startswith("report-") for name in writers)

        with sessions() as session:
            jobs.request_cancel(session, job_id)
        clock.now += 1.0
        reporter.should_cancel()  # hands the write over; a later call returns what it read
        eventually(reporter.should_cancel)

        reporter.on_event("epoch", {"epoch": 2})
        pending = reporter.take_pending()
        assert [(kind, payload) for kind, payload, _ in pending.events] == [
            ("epoch", {"epoch": 2})]
        writes = len(writers)
        reporter.on_event("warning", {"message": "after the end"})
        time.sleep(0.3)
        assert len(writers) == writes  # the writer wrote nothing more
        assert reported(sessions, job_id)[0] == [("epoch", 1), ("warning", None)]
    finally:
        reporter.stop()


def test_write_behind_error_is_raised_on_the_stage_thread(
        submit: Callable[..., str], sessions: sessionmaker[Session],
        service_settings: Settings, quick_config: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    _, reporter = claimed_reporter(submit, sessions, service_settings, quick_config, clock,
                                   write_behind=True)

    def failing(*_: Any, **__: Any) -> bool:
        raise RuntimeError("database gone")

    monkeypatch.setattr(stages, "report_activity", failing)
    reporter.start()
    try:
        reporter.on_event("warning", {"message": "now"})

        def raised() -> bool:
            try:
                reporter.should_cancel()
            except RuntimeError as exc:
                return str(exc) == "database gone"
            return False

        eventually(raised)
        with pytest.raises(RuntimeError, match="database gone"):
            reporter.take_pending()  # the stage's end does not record over a lost write
    finally:
        reporter.stop()


def test_a_lost_pool_childs_hand_over_spares_another_parents_process_with_its_pid(
        submit: Callable[..., str], sessions: sessionmaker[Session],
        service_settings: Settings, quick_config: dict[str, Any]) -> None:
    # Two worker containers on the host's network share its hostname, each with its own pid
    # namespace: the other's pool child may have the very pid of this parent's dead child.
    # Releasing "host:pid:" expired that live process's lease (and deleted its registry row),
    # so its stage was taken over and run twice.
    from worker.tasks import RecoveryLoop

    job_id = submit(quick_config, send=False)
    resources = WorkerResources(service_settings)
    pid = 4_000_000 + 7  # beyond any real pid: a child only in this test's pool listing
    neighbour = f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex}"
    with sessions() as session:
        stages.claim_stage(session, job_id, "mrc", owner=neighbour, lease_seconds=600,
                           max_attempts=3)
    pool = [pid]
    # No app: releasing anything would try to send its message (and fail the test).
    loop = RecoveryLoop(None, resources, children=lambda: list(pool))  # type: ignore[arg-type]
    assert loop.release_lost_children() == 0  # seen alive
    pool.clear()  # this parent's child of that pid exited
    assert loop.release_lost_children() == 0
    row = stage_row(sessions, job_id, "mrc")
    assert row.lease_owner == neighbour
    assert row.lease_expires_at is not None and row.lease_expires_at > utcnow()
    assert resources.worker_id.startswith(resources.owner_prefix(os.getpid()))


@pytest.mark.parametrize("finishing", [True, False])
def test_a_renewal_after_the_works_own_finish_is_not_a_lease_lost(
        finishing: bool, submit: Callable[..., str], sessions: sessionmaker[Session],
        service_settings: Settings, quick_config: dict[str, Any]) -> None:
    # The stage's finish commits (clearing its lease) before its reporter stops; a heartbeat
    # beating in between found the lease gone and logged "lease lost to another worker" (a CI
    # run's worker log showed it for an MRC stage that had just ended well). Once the finish
    # has begun, that renewal ends the heartbeat quietly; before it, a lease gone is still a
    # lease lost (the control case).
    job_id = submit(quick_config, send=False)
    settings = service_settings.model_copy(update={"worker_lease_seconds": 0.3})
    resources = WorkerResources(settings)
    with sessions() as session:
        stages.claim_stage(session, job_id, "mrc", owner=resources.worker_id,
                           lease_seconds=0.3, max_attempts=3)
    reporter = StageReporter(resources, job_id, "mrc")
    reporter.start()
    try:
        if finishing:
            reporter.begin_finish()
        with sessions() as session:  # what the finish's commit does to the lease
            session.execute(update(JobStage).where(JobStage.job_id == job_id,
                                                   JobStage.stage == "mrc")
                            .values(status="done", lease_owner=None, lease_expires_at=None))
            session.commit()
        heartbeat = reporter._thread
        assert heartbeat is not None
        # The heartbeat ends at its first renewal after the commit, either way.
        eventually(lambda: not heartbeat.is_alive())
        assert reporter.lease_lost is not finishing
    finally:
        reporter.stop()


def test_a_worker_whose_clock_runs_ahead_measures_the_time_limit_by_the_database_clock(
        submit: Callable[..., str], sessions: sessionmaker[Session],
        service_settings: Settings, quick_config: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The claim writes started_at on the database's clock (persistence/db_clock.py). Measured
    # by a worker clock two minutes ahead, a job with a minute left was two minutes older and
    # past its limit: the worker failed it at once with `timeout`.
    job_id = submit(quick_config, send=False)
    resources = WorkerResources(service_settings)
    monkeypatch.setattr(models, "datetime", skewed_datetime(120.0))
    with sessions() as session:
        claim = stages.claim_stage(session, job_id, "mrc", owner=resources.worker_id,
                                   lease_seconds=60, max_attempts=3)
    reporter = StageReporter(resources, job_id, "mrc", Clock(),
                             time_limit=TimeLimit(60.0, own=True), started_at=claim.job.started_at)
    assert reporter.should_cancel() is False  # a minute left: no TimeLimitExceeded
