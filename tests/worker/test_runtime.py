"""The stage reporter's batched reports (worker/runtime.py), on a real database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs, stages
from persistence.settings import Settings
from worker.runtime import StageReporter, WorkerResources

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
