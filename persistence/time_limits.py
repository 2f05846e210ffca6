"""The per-job wall-clock limit (``JOB_TIME_LIMIT_SECONDS``), measured from the job's first claim.

Two parties enforce it. The worker running a stage checks the deadline at every cancellation point
of the library (each batch and attack step) and fails the job with code ``timeout`` itself. The
workers' recovery loop fails, with the same code, every job still active a lease length past its
deadline: one whose worker died, hung, or whose stage waits for a worker, so no job stays
``running`` for ever. The lease length of slack lets a live worker's own check win the race.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from persistence.models import Job, utcnow
from persistence.stages import ACTIVE_STATUSES, fail_job

TIMEOUT_CODE = "timeout"


def timeout_message(limit_seconds: float) -> str:
    """The error message of a job that ran past ``limit_seconds``."""
    return (f"the job ran longer than its wall-clock limit of {limit_seconds:g} s "
            "(JOB_TIME_LIMIT_SECONDS); ask for fewer epochs, attack steps or MRC examples")


def seconds_left(started_at: datetime | None, limit_seconds: float,
                 now: datetime | None = None) -> float:
    """Seconds until the deadline of a job first claimed at ``started_at`` (the full limit when it
    has not started); negative once it has passed."""
    if started_at is None:
        return limit_seconds
    return (started_at + timedelta(seconds=limit_seconds) - (now or utcnow())).total_seconds()


def fail_overdue_jobs(session: Session, *, limit_seconds: float, grace_seconds: float,
                      now: datetime | None = None) -> list[str]:
    """Fail with code ``timeout`` every queued or running job started more than
    ``limit_seconds + grace_seconds`` ago; returns their ids. Each is one transaction
    (:func:`persistence.stages.fail_job`), a no-op for a job that ended meanwhile."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=limit_seconds + grace_seconds)
    overdue = list(session.execute(
        select(Job.id).where(Job.status.in_(ACTIVE_STATUSES), Job.started_at < cutoff)
        .order_by(Job.started_at)).scalars())
    session.commit()
    for job_id in overdue:
        fail_job(session, job_id, TIMEOUT_CODE, timeout_message(limit_seconds), now=now)
    return overdue



