"""The per-job wall-clock limit, measured from the job's first claim: the job's own
``time_limit_seconds`` when it was created with one (at most ``JOB_TIME_LIMIT_SECONDS``), else
``JOB_TIME_LIMIT_SECONDS``.

Two parties enforce it. The worker running a stage checks the deadline at every cancellation point
of the library (each batch and attack step) and fails the job with code ``timeout`` itself. The
workers' recovery loop fails, with the same code, every job still active a lease length past its
deadline: one whose worker died, hung, or whose stage waits for a worker, so no job stays
``running`` for ever. The lease length of slack lets a live worker's own check win the race.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from persistence.db_clock import db_now
from persistence.models import Job, utcnow
from persistence.stages import ACTIVE_STATUSES, fail_job

TIMEOUT_CODE = "timeout"


@dataclass(frozen=True)
class TimeLimit:
    """A job's wall-clock limit, and whether the job set it (``time_limit_seconds``) or the
    service's ``JOB_TIME_LIMIT_SECONDS`` applies."""

    seconds: float
    own: bool

    @classmethod
    def of(cls, job_limit_seconds: float | None, service_seconds: float) -> TimeLimit:
        if job_limit_seconds is not None:
            return cls(float(job_limit_seconds), own=True)
        return cls(service_seconds, own=False)

    def message(self) -> str:
        """The error message of a job that ran past it."""
        knob = "the job's time_limit_seconds" if self.own else "JOB_TIME_LIMIT_SECONDS"
        return (f"the job ran longer than its wall-clock limit of {self.seconds:g} s ({knob}); "
                "ask for fewer epochs, attack steps or MRC examples")

    def seconds_left(self, started_at: datetime | None, now: datetime | None = None) -> float:
        """Seconds until the deadline of a job first claimed at ``started_at`` (the whole limit
        when it has not started); negative once it has passed."""
        if started_at is None:
            return self.seconds
        return (started_at + timedelta(seconds=self.seconds) - (now or utcnow())).total_seconds()


def job_time_limit(job: Job, service_seconds: float) -> TimeLimit:
    """``job``'s limit: its own, else the service's ``service_seconds``."""
    return TimeLimit.of(job.time_limit_seconds, service_seconds)


def fail_overdue_jobs(session: Session, *, limit_seconds: float, grace_seconds: float,
                      now: datetime | None = None) -> list[str]:
    """Fail with code ``timeout`` every queued or running job started more than its limit (its
    own, else ``limit_seconds``) plus ``grace_seconds`` ago; returns their ids. Each is one
    transaction (:func:`persistence.stages.fail_job`), a no-op for a job that ended meanwhile.
    A job whose MRC shards or sweep candidates still run under live leases is failed as a part's
    failure fails it: the timeout becomes pending, the parts are asked to stop, and the last one
    to stop ends the job (its id is returned all the same). One still held ``grace_seconds``
    later (a part whose process hangs while its heartbeat renews the lease) is failed then
    whatever runs, so no job stays ``running`` for ever."""
    now = now or db_now(session)
    # Active jobs are few (at most the queue); each one's own limit is applied here.
    active = session.execute(
        select(Job.id, Job.started_at, Job.time_limit_seconds)
        .where(Job.status.in_(ACTIVE_STATUSES), Job.started_at.is_not(None))
        .order_by(Job.started_at)).all()
    session.commit()
    overdue = []
    for job_id, started_at, own_seconds in active:
        limit = TimeLimit.of(own_seconds, limit_seconds)
        if limit.seconds_left(started_at, now) < -grace_seconds:
            fail_job(session, job_id, TIMEOUT_CODE, limit.message(), now=now,
                     force=limit.seconds_left(started_at, now) < -2 * grace_seconds)
            overdue.append(job_id)
    return overdue
