"""The stage reporter's batched reports and the materialization lease's heartbeat
(worker/runtime.py), on a real database."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs, materializations, stages
from persistence.models import Materialization, utcnow
from persistence.settings import Settings
from persistence.stages import LeaseLost
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


def test_reports_are_written_in_order_at_most_once_per_interval(
        submit: Callable[..., str], sessions: sessionmaker[Session],
        service_settings: Settings, quick_config: dict[str, Any]) -> None:
    job_id = submit(quick_config, send=False)
    settings = service_settings.model_copy(update={"progress_interval_seconds": 1.0})
    resources = WorkerResources(settings)
    with sessions() as session:
        stages.claim_stage(session, job_id, "mrc", owner=resources.worker_id, lease_seconds=60,
                           max_attempts=3)
    clock = Clock()
    reporter = StageReporter(resources, job_id, "mrc", clock)

    reporter.on_event("epoch", {"epoch": 1})  # the first report is written at once
    reporter.on_event("epoch", {"epoch": 2})
    reporter.on_progress("mrc", 0.5, "half")
    assert reported(sessions, job_id) == ([("epoch", 1)], None)
    reporter.on_event("warning", {"message": "now"})  # a warning takes what waits along
    assert reported(sessions, job_id) == ([("epoch", 1), ("epoch", 2), ("warning", None)], "half")

    reporter.on_event("epoch", {"epoch": 3})
    reporter.on_progress("mrc", 0.7, "later")
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
    reporter.flush()  # what the stage does before recording its outputs
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
    lease = MaterializationLease(resources, row_id)
    lease.start()
    try:
        time.sleep(0.6)  # past the first lease: alive only if the heartbeat renewed it
        with sessions() as session:
            held = session.get_one(Materialization, row_id)
            assert held.lease_owner == resources.worker_id
            assert held.lease_expires_at is not None and held.lease_expires_at > utcnow()
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
