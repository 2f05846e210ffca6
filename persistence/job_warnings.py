"""A job's warnings, read from its event log: the ``warning`` events the pipeline and the workers
write (``{"stage", "message"}``, and ``"candidate"`` for a sweep candidate's), so that the job's
own view, its report page and its webhook messages say that a result is questionable without the
client having to read every event.

The same warning written again (a retried stage says it once per attempt) is one item with a
count. One statement for any number of jobs, through the ``(job_id, id)`` index of ``job_events``:
it reads the jobs' own events only (tests/api/test_query_plans.py), grouped and ranked in the
database, so at most :data:`MAX_JOB_WARNINGS` items per job leave it whatever a job wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from persistence.models import JobEvent
from persistence.transactions import EventKind

#: Warnings shown per job (distinct ones, first written first); ``JobWarnings.total`` counts all.
MAX_JOB_WARNINGS = 100


@dataclass(frozen=True)
class JobWarning:
    """One distinct warning of a job: where (``stage``, and the sweep ``candidate``), what, when
    it was first written (``at``) and how many times (``count``)."""

    stage: str | None
    candidate: int | None
    message: str
    at: datetime
    count: int


@dataclass(frozen=True)
class JobWarnings:
    """A job's first :data:`MAX_JOB_WARNINGS` distinct warnings in event order, and how many
    distinct ones it has (``total``: more than ``len(items)`` when the list was cut)."""

    items: list[JobWarning]
    total: int

    @property
    def truncated(self) -> bool:
        return self.total > len(self.items)


NO_WARNINGS = JobWarnings([], 0)


def job_warnings(session: Session, job_ids: Sequence[str], *,
                 limit: int = MAX_JOB_WARNINGS) -> dict[str, JobWarnings]:
    """Each job's warnings (:class:`JobWarnings`), every id of ``job_ids`` a key (a job without
    any has :data:`NO_WARNINGS`). One statement."""
    found: dict[str, JobWarnings] = {job_id: NO_WARNINGS for job_id in job_ids}
    if not job_ids:
        return found
    stage = JobEvent.payload["stage"].as_string()
    # Read as text, not cast in SQL: a cast that failed on one odd payload would fail the
    # job's every read (the workers write integers; anything else is shown as no candidate).
    candidate = JobEvent.payload["candidate"].as_string()
    message = JobEvent.payload["message"].as_string()
    grouped = (
        select(JobEvent.job_id, stage.label("stage"), candidate.label("candidate"),
               message.label("message"), func.min(JobEvent.id).label("first_id"),
               func.min(JobEvent.created_at).label("at"), func.count().label("count"))
        .where(JobEvent.job_id.in_(list(job_ids)), JobEvent.kind == EventKind.WARNING)
        .group_by(JobEvent.job_id, stage, candidate, message)
        .subquery("grouped"))
    ranked = select(
        grouped,
        func.row_number().over(partition_by=grouped.c.job_id, order_by=grouped.c.first_id)
        .label("rank"),
        func.count().over(partition_by=grouped.c.job_id).label("total"),
    ).subquery("ranked")
    query = (select(ranked.c.job_id, ranked.c.stage, ranked.c.candidate, ranked.c.message,
                    ranked.c.at, ranked.c.count, ranked.c.total)
             .where(ranked.c.rank <= limit)
             .order_by(ranked.c.job_id, ranked.c.first_id))
    items: dict[str, list[JobWarning]] = {}
    totals: dict[str, int] = {}
    for row in session.execute(query).mappings():
        items.setdefault(row["job_id"], []).append(JobWarning(
            stage=row["stage"], candidate=_index(row["candidate"]), message=row["message"] or "",
            at=row["at"], count=int(row["count"])))
        totals[row["job_id"]] = int(row["total"])
    for job_id, listed in items.items():
        found[job_id] = JobWarnings(listed, totals[job_id])
    return found


def _index(value: object) -> int | None:
    """A candidate index as the database gave it (JSON text, or SQLite's own integer)."""
    text = str(value) if value is not None else ""
    return int(text) if text.isascii() and text.isdigit() else None


def warnings_of(session: Session, job_id: str, *, limit: int = MAX_JOB_WARNINGS) -> JobWarnings:
    """One job's warnings (:func:`job_warnings`)."""
    return job_warnings(session, [job_id], limit=limit)[job_id]
