"""Helpers of the persistence tests: fixed times and a job spec, and shortcuts that claim and
finish stages in a session of their own. Fixtures built on them live in ``conftest.py``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs, stages
from persistence.models import JobStage, Project
from persistence.stages import StageOutputs

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
LEASE = 30.0
SPEC = {"architecture": {"name": "small_cnn"}, "dataset": {"name": "digits"}}


def add_project(sessions: sessionmaker[Session], project_id: str) -> None:
    """A projects row with this id (and name), unless there is one: rows of a project are only
    written while its row exists (``persistence.transactions.lock_project``)."""
    with sessions() as session:
        if session.get(Project, project_id) is None:
            session.add(Project(id=project_id, name=project_id))
            session.commit()


def claim(sessions: sessionmaker[Session], job_id: str, stage: str = "mrc", owner: str = "w1",
          now: datetime = T0, max_attempts: int = 3) -> stages.StageClaim:
    with sessions() as session:
        return stages.claim_stage(session, job_id, stage, owner=owner, lease_seconds=LEASE,
                                  max_attempts=max_attempts, now=now)


def finish(sessions: sessionmaker[Session], job_id: str, stage: str, owner: str = "w1",
           outputs: StageOutputs | None = None, now: datetime = T0) -> None:
    with sessions() as session:
        stages.finish_stage(session, job_id, stage, owner=owner, outputs=outputs or StageOutputs(),
                            now=now)


def stage_row(sessions: sessionmaker[Session], job_id: str, stage: str) -> JobStage:
    with sessions() as session:
        return session.get_one(JobStage, (job_id, stage))


def event_kinds(sessions: sessionmaker[Session], job_id: str) -> list[str]:
    with sessions() as session:
        return [event.kind for event in jobs.list_events(session, job_id)]


MRC_ROWS = [
    {"name": "conv1", "parameters": 100, "mrc": 0.5, "worst_robust_loss": 1.5,
     "robust_accuracy_at_worst": 30.0, "robust_accuracy_drop": 10.0, "seconds": 0.1,
     "passes": 1, "exact": False},  # a lower bound (mrc.table = "selection")
    {"name": "fc", "parameters": 50, "mrc": 0.1, "worst_robust_loss": 1.1,
     "robust_accuracy_at_worst": 38.0, "robust_accuracy_drop": 2.0, "seconds": 0.1},
]


@dataclass
class Race:
    """What :func:`race` saw: the values returned, the ``refused`` errors, anything else."""

    values: list[Any] = field(default_factory=list)
    refused: list[Exception] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


def race(count: int, attempt: Callable[[Callable[[], None]], Any],
         refusal: type[Exception]) -> Race:
    """Run ``attempt(start)`` in ``count`` threads at once; each calls ``start()`` (a barrier)
    right before the step under test, after whatever it reads first."""
    barrier, seen = threading.Barrier(count), Race()

    def one() -> None:
        try:
            seen.values.append(attempt(barrier.wait))
        except refusal as exc:
            seen.refused.append(exc)
        except BaseException as exc:
            seen.errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return seen


def wait_until_blocked(watcher: Session, timeout_s: float = 20.0) -> None:
    """Return once a connection to the test's Postgres database waits for a row lock (a
    thread's transaction has reached the row another holds); AssertionError after
    ``timeout_s``."""
    from sqlalchemy import text

    deadline = time.monotonic() + timeout_s
    while not watcher.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()")).scalar_one():
        assert time.monotonic() < deadline, "no transaction waited for the lock"
        watcher.commit()
        time.sleep(0.02)
