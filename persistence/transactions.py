"""What :mod:`persistence.jobs` (the job lifecycle, used by the API) and :mod:`persistence.stages`
(the stage leases, used by the workers) both build their transactions from, and the errors they
share. Nothing outside ``persistence/`` calls these helpers; the API and the workers import only
the errors.

Every function of those two modules that writes is one :func:`transaction`: it commits before
returning, or rolls back and raises. Readers leave the session's transaction to the caller (close
the session when done: on SQLite an open transaction holds the database lock). Locks are always
taken in the order jobs → job_stages (:func:`load_job` with ``for_update``, then the stages), so
transactions cannot deadlock.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, lazyload
from sqlalchemy.orm.attributes import flag_modified

from persistence import leases
from persistence.models import (
    TERMINAL_STATUSES,
    Job,
    JobEvent,
    JobStage,
    JobStatus,
    MRCShard,
    Project,
    StageName,
    StageStatus,
    SweepCandidate,
)
from persistence.storage_ledger import settle_job_reservation


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
class PersistenceError(Exception):
    """Base class; ``code`` is stable and the API maps it to an HTTP status once."""

    code = "persistence_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ProjectNotFound(PersistenceError):
    """The project was deleted (``persistence.deletion.delete_project``) while a request of
    one of its keys was under way."""

    code = "project_not_found"

    def __init__(self, project_id: str) -> None:
        super().__init__(f"project {project_id!r} no longer exists")
        self.project_id = project_id


class JobNotFound(PersistenceError):
    code = "job_not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------
class EventKind(enum.StrEnum):
    """Kinds of :class:`JobEvent`; the pipeline adds its own (``epoch``, ``module_scored``, ...)."""

    JOB_CREATED = "job_created"
    STAGE_STARTED = "stage_started"
    STAGE_FINISHED = "stage_finished"
    STAGE_RETRY = "stage_retry"
    STAGE_RECOVERED = "stage_recovered"
    STAGE_HANDED_BACK = "stage_handed_back"
    CANCEL_REQUESTED = "cancel_requested"
    FAILURE_PENDING = "failure_pending"
    JOB_SUCCEEDED = "job_succeeded"
    JOB_FAILED = "job_failed"
    JOB_CANCELLED = "job_cancelled"
    WARNING = "warning"


# --------------------------------------------------------------------------------------------
# Building blocks of a transaction
# --------------------------------------------------------------------------------------------
@contextmanager
def transaction(session: Session) -> Iterator[None]:
    """Commit when the block ends, roll back (and re-raise) when it raises."""
    try:
        yield
        session.commit()
    except BaseException:
        session.rollback()
        raise


def lock_project(session: Session, project_id: str) -> None:
    """Hold the project's row until the transaction ends, before counting what a per-project
    limit bounds (active jobs, stored bytes, webhooks) and inserting one more: concurrent
    requests of one project then count one after the other, so they cannot pass the limit
    together. The row lock does it on Postgres; SQLite transactions start with BEGIN IMMEDIATE
    (persistence.db), which serialises writers the same way. :class:`ProjectNotFound` once the
    project is deleted: a request that authenticated just before then stores nothing."""
    found = session.execute(
        select(Project.id).where(Project.id == project_id).with_for_update()).scalar_one_or_none()
    if found is None:
        raise ProjectNotFound(project_id)


def load_job(session: Session, job_id: str, *, for_update: bool = False,
             relations: bool = True) -> Job:
    """The job, fresh from the database (row-locked with ``for_update``); :class:`JobNotFound`.
    ``relations=False``: its labels and stages are loaded only if read, in the session (two
    statements fewer: a stage transaction reads the stages itself and never the labels)."""
    query = select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    if not relations:
        query = query.options(lazyload(Job.labels), lazyload(Job.stages))
    if for_update:
        query = query.with_for_update()
    job = session.execute(query).scalar_one_or_none()
    if job is None:
        raise JobNotFound(job_id)
    return job


def load_stages(session: Session, job_id: str) -> list[JobStage]:
    """The job's stages in pipeline order, fresh from the database."""
    query = (select(JobStage).where(JobStage.job_id == job_id).order_by(JobStage.position)
             .execution_options(populate_existing=True))
    return list(session.execute(query).scalars())


def touch(job: Job, now: datetime) -> None:
    """Set ``job.updated_at`` to ``now``."""
    job.updated_at = now
    # Even when the value is unchanged: otherwise the column's onupdate would put the wall clock.
    flag_modified(job, "updated_at")


def storable_text(text: str) -> str:
    """``text`` with lone surrogates written as ``\\udcXX`` escapes and NUL as ``\\x00``: a file
    name that is not UTF-8 (a tar packed on a Latin-1 system) reaches Python as such surrogates,
    and a library error naming the file could not be stored (the database drivers encode UTF-8
    and raised UnicodeEncodeError, so the job was not marked failed). Postgres refuses NUL in
    text and JSON (SQLite stores it), so an error quoting a name read from an upload failed to
    be stored there only."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _storable(value: Any) -> Any:
    """An event payload with :func:`storable_text` applied to every string in it."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, Mapping):
        return {storable_text(str(key)): _storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(item) for item in value]
    return value


def log_event(session: Session, job_id: str, kind: str, payload: Mapping[str, Any],
              now: datetime) -> JobEvent:
    """Add an event to the session (written when the caller's transaction commits)."""
    event = JobEvent(job_id=job_id, kind=str(kind), payload=_storable(payload), created_at=now)
    session.add(event)
    if kind in (EventKind.JOB_SUCCEEDED, EventKind.JOB_FAILED, EventKind.JOB_CANCELLED):
        # The webhook messages of a job's end join this transaction (an outbox): they exist if
        # and only if the end is committed. Imported here: persistence.webhooks imports this.
        from persistence.webhooks import enqueue_job_notifications

        enqueue_job_notifications(session, job_id, str(kind), now)
    return event


def lease_is_live(stage: JobStage, now: datetime) -> bool:
    """True while a worker holds the stage under a lease that has not expired at ``now``."""
    return leases.is_live(stage, now)


def work_is_held(session: Session, job_id: str, stages: Sequence[JobStage],
                 now: datetime) -> bool:
    """True while a worker holds any of the job's work under a live lease: one of ``stages``
    (the job's), or a part of a split stage (an MRC shard, a sweep candidate), which holds the
    work of a stage handed to its parts (that stage's own row then has no lease). A job whose
    cancellation is asked ends only once this is False: before, a sweep's job was cancelled at
    once while its candidates still ran, so it could be deleted under a candidate about to store
    its θ_FT (left in the store, and the worker's recording failed on a missing job)."""
    if any(lease_is_live(stage, now) for stage in stages):
        return True
    return parts_hold_work(session, job_id, now)


def parts_hold_work(session: Session, job_id: str, now: datetime) -> bool:
    """True while an MRC shard or sweep candidate of the job runs under a live lease."""
    return any(session.execute(
        select(model.job_id).where(model.job_id == job_id, model.status == StageStatus.RUNNING,
                                   model.lease_expires_at > now).limit(1)).first() is not None
        for model in (MRCShard, SweepCandidate))


def failure_is_pending(job: Job) -> bool:
    """True while the job runs on with a failure recorded (:func:`fail_when_parts_stop`): its
    ``error_code`` is set only once it failed, or while its parts stop for such a failure."""
    return job.status not in TERMINAL_STATUSES and job.error_code is not None


def fail_when_parts_stop(session: Session, job: Job, stage: JobStage | None, code: str,
                         message: str, now: datetime, *, force: bool = False,
                         field: str | None = None) -> bool:
    """Fail the locked ``job`` with ``code`` and ``message``, or, while a sibling part of a
    split stage (an MRC shard, a sweep candidate) still runs under a live lease, record the
    failure as pending: ``error_code``/``error_message`` set, ``cancel_requested`` set so that
    the running parts stop at their next batch as for a cancellation, a ``failure_pending``
    event; the status stays ``running``. The last part to stop (or a claim once its lease
    expired) then ends the job failed with that error (:func:`end_stopped_job`). A failure
    already pending is kept: the job's error is the first failure's. ``force`` fails it now
    whatever runs (the recovery loop's last word on a job past its time limit). ``field``: the
    config setting a library error blames (``finetune.module``), kept with the error (the job's
    ``error_field``) and put in both events' payloads. Returns whether the job ended now.

    Before, the first failing part failed the job at once while its siblings still ran, so a
    ``DELETE`` in that window was accepted and a sibling then stored its θ_FT or rows under the
    deleted job (an orphan object, an error in that worker's log)."""
    first = job.error_code is None
    if first:
        _record_error(job, code, message, field)
    if not force and parts_hold_work(session, job.id, now):
        job.cancel_requested = True
        touch(job, now)
        if first:
            log_event(session, job.id, EventKind.FAILURE_PENDING,
                      {"stage": stage.stage if stage is not None else job.stage, "code": code,
                       "message": storable_text(message), **_field_of(field)}, now)
        return False
    fail_now(session, job, stage, job.error_code or code, job.error_message or message, now,
             field=field if first else job.error_field)
    return True


def end_stopped_job(session: Session, job: Job, stages: Sequence[JobStage],
                    now: datetime) -> None:
    """End the locked ``job`` whose work has all stopped after it was asked to stop: failed with
    its pending failure's error if one waits (:func:`fail_when_parts_stop`), else cancelled."""
    if failure_is_pending(job):
        stage = next((row for row in stages if row.stage == job.stage), None)
        assert job.error_code is not None
        # The pending failure's field too: before, only its ``failure_pending`` event had it.
        fail_now(session, job, stage, job.error_code, job.error_message or job.error_code, now,
                 field=job.error_field)
    else:
        cancel_job(session, job, stages, now)


#: ``job_stages.lease_owner`` of a stage whose work was handed to its parts
#: (``persistence.stage_shards``: MRC shards, sweep candidates).
SHARDED_OWNER = "shards"
_PARTS_OF: dict[StageName, type[MRCShard] | type[SweepCandidate]] = {
    StageName.MRC: MRCShard, StageName.FINETUNE: SweepCandidate}


def _cancel_waiting_parts(session: Session, job_id: str, stage: JobStage) -> None:
    """Mark the parts of ``stage`` (if handed to parts) that never started ``cancelled`` as its
    job ends: they will not run (no message is sent again for an ended job), and before they
    read ``pending`` for good (a cancelled sweep's ``GET /curves`` showed its candidates not
    started as waiting to run). Parts that ran keep the status their task recorded."""
    model = _PARTS_OF.get(StageName(stage.stage))
    if model is None or stage.lease_owner != SHARDED_OWNER:
        return
    session.execute(update(model)
                    .where(model.job_id == job_id, model.status == StageStatus.PENDING)
                    .values(status=StageStatus.CANCELLED)
                    .execution_options(synchronize_session=False))


def _field_of(field: str | None) -> dict[str, str]:
    """The ``field`` key of a failure event's payload: present only when a setting is blamed."""
    return {"field": field} if field else {}


def _record_error(job: Job, code: str, message: str, field: str | None) -> None:
    """The one place a job's error is written: its ``code``, ``message`` and ``field`` (the
    config setting a library error blames, or None) go together, so that none of them is left
    from an earlier write."""
    job.error_code = code
    job.error_message = storable_text(message)
    job.error_field = field


def fail_now(session: Session, job: Job, stage: JobStage | None, code: str, message: str,
             now: datetime, *, field: str | None = None) -> None:
    """End the job as failed with an error ``code`` and ``message``; ``stage`` (if any) is marked
    failed, its lease dropped, and becomes the job's stage. ``field``, the config setting a
    library error blames, is kept with the error and goes in the ``job_failed`` event's
    payload."""
    message = storable_text(message)
    job.status = JobStatus.FAILED
    _record_error(job, code, message, field)
    job.finished_at = now
    touch(job, now)
    if stage is not None:
        _cancel_waiting_parts(session, job.id, stage)
        job.stage = stage.stage
        stage.status = StageStatus.FAILED
        stage.lease_owner = None
        stage.lease_expires_at = None
        stage.finished_at = now
        stage.last_error = message
    settle_job_reservation(session, job)  # ended: what it did not store is free again
    log_event(session, job.id, EventKind.JOB_FAILED,
              {"stage": job.stage, "code": code, "message": message, **_field_of(field)}, now)


def cancel_job(session: Session, job: Job, stages: Sequence[JobStage], now: datetime) -> None:
    """End the job as cancelled: its unfinished stages are cancelled, their leases dropped."""
    job.status = JobStatus.CANCELLED
    job.cancel_requested = True
    job.finished_at = now
    touch(job, now)
    for stage in stages:
        if stage.status in (StageStatus.PENDING, StageStatus.RUNNING):
            _cancel_waiting_parts(session, job.id, stage)
            stage.status = StageStatus.CANCELLED
            stage.lease_owner = None
            stage.lease_expires_at = None
            if stage.started_at is not None:
                stage.finished_at = now
    settle_job_reservation(session, job)  # ended: what it did not store is free again
    log_event(session, job.id, EventKind.JOB_CANCELLED, {"stage": job.stage}, now)
