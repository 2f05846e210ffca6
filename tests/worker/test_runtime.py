"""The stage reporter's batched event writes (worker/runtime.py), on a real database."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs
from persistence.settings import Settings
from worker.runtime import StageReporter, WorkerResources

pytestmark = pytest.mark.service


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def kinds(sessions: sessionmaker[Session], job_id: str) -> list[str]:
    with sessions() as session:
        return [e.kind for e in jobs.list_events(session, job_id, limit=1000)
                if e.kind not in ("job_created", "cancel_requested")]


def test_events_are_written_in_order_at_most_once_per_interval(
        submit: Callable[..., str], sessions: sessionmaker[Session],
        service_settings: Settings, quick_config: dict) -> None:
    job_id = submit(quick_config, send=False)
    clock = Clock()
    settings = service_settings.model_copy(update={"progress_interval_seconds": 1.0})
    reporter = StageReporter(WorkerResources(settings), job_id, "finetune", clock)
    reporter.on_event("epoch", {"epoch": 1})  # the first is written at once
    reporter.on_event("epoch", {"epoch": 2})
    reporter.on_event("epoch", {"epoch": 3})
    assert kinds(sessions, job_id) == ["epoch"]
    reporter.on_event("warning", {"message": "now"})  # a warning takes the waiting ones along
    assert kinds(sessions, job_id) == ["epoch"] * 3 + ["warning"]
    reporter.on_event("epoch", {"epoch": 4})
    assert not reporter.should_cancel()  # within the interval: still waiting
    assert len(kinds(sessions, job_id)) == 4
    clock.now += 1.0
    assert not reporter.should_cancel()  # an interval later: written
    reporter.on_event("epoch", {"epoch": 5})
    reporter.flush_events()
    with sessions() as session:
        payloads = [e.payload.get("epoch") for e in jobs.list_events(session, job_id)
                    if e.kind == "epoch"]
    assert payloads == [1, 2, 3, 4, 5]

    # Found cancelled: what waits is written before the stage stops.
    reporter.on_event("epoch", {"epoch": 6})
    with sessions() as session:
        jobs.request_cancel(session, job_id)
    clock.now += 1.0
    assert reporter.should_cancel()
    assert kinds(sessions, job_id)[-1] == "epoch"
    assert kinds(sessions, job_id).count("epoch") == 6
