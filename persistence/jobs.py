"""The job lifecycle, as the API sees it: creating a job (idempotently, by ``Idempotency-Key``),
reading and listing jobs (cursor pages, label and status filters), queue position, the event log,
the results tables and artifacts, and cancellation. The API's routes call these; the workers call
only :func:`append_event` here, and run stages through :mod:`persistence.stages`.

Every function that writes is one transaction (see :mod:`persistence.transactions`); readers
leave the session's transaction to the caller.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, Subquery, case, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from persistence.audit import Actor, record_audit_event
from persistence.db_clock import db_now
from persistence.models import (
    STAGE_ORDER,
    TERMINAL_STATUSES,
    Artifact,
    Checkpoint,
    EpochMetric,
    InterpolationPoint,
    Job,
    JobEvent,
    JobLabel,
    JobStage,
    JobStatus,
    MRCRow,
    StageStatus,
    SweepCandidate,
    by_code_point,
    utcnow,
)
from persistence.pages import before_cursor, list_binding, older_than, page_of
from persistence.records import hold_stored_bytes, job_reserved_bytes
from persistence.storage_ledger import settle_job_reservation
from persistence.transactions import (
    EventKind,
    JobNotFound,
    PersistenceError,
    end_stopped_job,
    load_job,
    load_stages,
    lock_project,
    log_event,
    touch,
    transaction,
    work_is_held,
)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
class IdempotencyConflict(PersistenceError):
    """The Idempotency-Key was used before with a different request (HTTP 409)."""

    code = "idempotency_conflict"

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used for job {job_id} with a different request "
            "body; use a new key for a new job")
        self.key = key
        self.job_id = job_id


class JobAlreadyFinished(PersistenceError):
    """The job has ended, so it cannot be cancelled (HTTP 409)."""

    code = "job_finished"

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"job {job_id} has already finished with status '{status}'")
        self.job_id = job_id
        self.status = status


class ActiveJobLimitReached(PersistenceError):
    """The project already has its limit of queued and running jobs (HTTP 429)."""

    code = "quota_exceeded"

    def __init__(self, active: int, limit: int) -> None:
        super().__init__(f"the project has {active} queued or running jobs; its limit is {limit}")
        self.active = active
        self.limit = limit


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageSummary:
    """A stage of a job as the API shows it."""

    stage: str
    status: str
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None


_STAGE_NAMES = ("stage", "status", "attempts", "started_at", "finished_at")
_STAGE_COLUMNS = (JobStage.job_id, *(getattr(JobStage, name) for name in _STAGE_NAMES))


@dataclass(frozen=True)
class JobSummary:
    """A job as a list shows it: the columns of :class:`Job` (``spec`` only when asked for), its
    labels, its queue position and, when asked for, its stages."""

    id: str
    status: str
    stage: str | None
    stage_progress: float
    progress_message: str | None
    cancel_requested: bool
    checkpoint_id: str
    dataset_id: str | None
    device: str | None
    attempts: int
    selected_module: str | None
    chosen_alpha: float | None
    metrics: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    error_field: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    project_id: str | None
    cost_estimate: int | None
    cost_gflop: float | None
    time_limit_seconds: float | None
    queue_position: int | None
    label_dict: dict[str, str]
    spec: dict[str, Any] | None
    stages: list[StageSummary] | None


_SUMMARY_NAMES = (
    "id", "status", "stage", "stage_progress", "progress_message", "cancel_requested",
    "checkpoint_id", "dataset_id", "device", "attempts", "selected_module", "chosen_alpha",
    "metrics", "error_code", "error_message", "error_field", "created_at", "started_at",
    "finished_at", "updated_at", "project_id", "cost_estimate", "cost_gflop", "time_limit_seconds")
_SUMMARY_COLUMNS = tuple(getattr(Job, name) for name in _SUMMARY_NAMES)


@dataclass(frozen=True)
class JobPage:
    jobs: list[JobSummary]
    next_cursor: str | None


# --------------------------------------------------------------------------------------------
# Creating and reading jobs
# --------------------------------------------------------------------------------------------
def request_fingerprint(payload: Any) -> str:
    """SHA-256 (hex) of ``payload`` as canonical JSON: equal requests give equal fingerprints."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def create_job(
    session: Session,
    *,
    spec: Mapping[str, Any],
    checkpoint_id: str,
    dataset_id: str | None = None,
    labels: Mapping[str, str] | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    now: datetime | None = None,
    project_id: str | None = None,
    cost_estimate: int | None = None,
    cost_gflop: float | None = None,
    request_id: str | None = None,
    max_active_jobs: int | None = None,
    time_limit_seconds: float | None = None,
    reserved_bytes: int = 0,
    max_stored_bytes: int | None = None,
    warnings: Sequence[str] = (),
    actor: Actor | None = None,
) -> tuple[Job, bool]:
    """Create a queued job with its labels and its three pending stages; returns (job, created).
    Each of ``warnings`` becomes a ``warning`` event of no stage after its ``job_created``.
    ``actor``'s ``job.created`` is recorded in the job's transaction (not for a replay).

    With ``max_active_jobs`` (and ``project_id``), the project's queued and running jobs are
    counted in the transaction that inserts the job, under a lock on the project's row, so
    concurrent requests cannot together pass the limit; :class:`ActiveJobLimitReached` if the
    project is at it. With ``max_stored_bytes``, likewise, the job's ``reserved_bytes``
    (``persistence.records.job_reserved_bytes``) must fit the project's stored-bytes quota:
    :class:`StorageQuotaReached` otherwise.

    With ``idempotency_key``: if a job with that key exists and its ``request_hash`` is the same,
    that job is returned with ``created=False``; if the hash differs, :class:`IdempotencyConflict`.
    Two concurrent requests with the same key create one job (the unique index decides), and
    the later one is answered with it, never refused for the limit that job fills.
    ``spec`` is ``RiftConfig.model_dump(mode="json")``. The caller enqueues the first stage
    (``mrc``) after this returns, so a worker never sees an uncommitted job.
    """
    now = now or db_now(session)
    if idempotency_key is not None:
        existing = _job_by_idempotency_key(session, idempotency_key)
        if existing is not None:
            session.commit()
            return _same_request(existing, idempotency_key, request_hash), False

    job = Job(
        status=JobStatus.QUEUED, stage=None, stage_progress=0.0, spec=dict(spec),
        checkpoint_id=checkpoint_id, dataset_id=dataset_id, idempotency_key=idempotency_key,
        request_hash=request_hash, cancel_requested=False, attempts=0, created_at=now,
        updated_at=now, project_id=project_id, cost_estimate=cost_estimate,
        cost_gflop=cost_gflop, request_id=request_id, time_limit_seconds=time_limit_seconds,
    )
    # The job's project and instant are copied onto its labels: the label filter's index.
    job.labels = [JobLabel(key=k, value=v, project_id=project_id, created_at=now)
                  for k, v in sorted((labels or {}).items())]
    # The first stage's message goes out once this commits: it waits from now.
    job.stages = [JobStage(stage=stage, position=i, status=StageStatus.PENDING, attempts=0,
                           dispatched_at=now if i == 0 else None)
                  for i, stage in enumerate(STAGE_ORDER)]
    try:
        with transaction(session):
            if idempotency_key is not None and project_id is not None and (
                    max_active_jobs is not None or max_stored_bytes is not None):
                # A request with the same key, sent at the same moment, may have recorded its
                # job while this one waited for the project's lock: that job is the answer, and
                # it must not be counted as another against the limits below (a 429 or 413 for
                # a replay). Looked up under the lock, so it is seen once committed.
                lock_project(session, project_id)
                earlier = _job_by_idempotency_key(session, idempotency_key)
                if earlier is not None:
                    return _same_request(earlier, idempotency_key, request_hash), False
            if max_active_jobs is not None and project_id is not None:
                _hold_active_job_slot(session, project_id, max_active_jobs)
            hold_stored_bytes(session, project_id, reserved_bytes, max_stored_bytes)
            # Its reservation as the reference count reads it (from its spec and checkpoint,
            # whatever the caller passed), on the project's ledger from now until it ends.
            checkpoint = session.get(Checkpoint, checkpoint_id)
            job.reserved_bytes = 0 if checkpoint is None else job_reserved_bytes(
                checkpoint.size, job.spec, checkpoint.num_tensors)
            job.reserved_bytes_left = 0
            settle_job_reservation(session, job, artifacts=0)
            session.add(job)
            session.flush()
            log_event(session, job.id, EventKind.JOB_CREATED, {"labels": dict(labels or {})}, now)
            for message in warnings:
                log_event(session, job.id, EventKind.WARNING, {"stage": None, "message": message},
                          now)
            if actor is not None:
                record_audit_event(session, actor, "job.created", project_id=project_id,
                                   resource_id=job.id,
                                   details={"checkpoint_id": checkpoint_id,
                                            "dataset_id": dataset_id}, now=now)
    except IntegrityError:
        # Lost a race on the unique idempotency key: the other request's job is the answer.
        if idempotency_key is None:
            raise
        existing = _job_by_idempotency_key(session, idempotency_key)
        session.commit()
        if existing is None:
            raise
        return _same_request(existing, idempotency_key, request_hash), False
    return job, True


def count_active_jobs(session: Session, project_id: str) -> int:
    """The project's queued and running jobs."""
    return int(session.execute(
        select(func.count()).select_from(Job).where(
            Job.project_id == project_id,
            Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))).scalar_one())


def _hold_active_job_slot(session: Session, project_id: str, limit: int) -> None:
    lock_project(session, project_id)
    active = count_active_jobs(session, project_id)
    if active >= limit:
        raise ActiveJobLimitReached(active, limit)


def _job_by_idempotency_key(session: Session, key: str) -> Job | None:
    query = (select(Job).where(Job.idempotency_key == key)
             .execution_options(populate_existing=True))
    return session.execute(query).scalar_one_or_none()


def _same_request(job: Job, key: str, request_hash: str | None) -> Job:
    if job.request_hash != request_hash:
        raise IdempotencyConflict(key, job.id)
    return job


def get_job(session: Session, job_id: str) -> Job:
    """The job (labels and stages loaded), fresh from the database; :class:`JobNotFound`."""
    return load_job(session, job_id)


@functools.cache
def queue_position_column() -> ColumnElement[int | None]:
    """A column for a query on ``jobs``: the row's queue position (1 for the next queued job to
    start, 2 for the one after, ...), NULL unless queued. A correlated count over the
    ``(status, created_at, id)`` index, so a page of jobs gets its positions in its own statement
    instead of one query per job. Built once (cached): an immutable expression, and building it
    cost more than running it."""
    ahead = aliased(Job)
    count = (
        select(func.count())
        .select_from(ahead)
        # One row comparison, an index bound (persistence.pages.older_than): the OR form was
        # not, and each position read the whole queue's heap rows instead of index entries.
        .where(ahead.status == JobStatus.QUEUED,
               older_than(ahead.created_at, ahead.id, Job.created_at, Job.id))
        .correlate(Job)
        .scalar_subquery()
    )
    return case((Job.status == JobStatus.QUEUED, count + 1), else_=None).label("queue_position")


def _queue_positions() -> Any:
    """Every queued job's id with its queue position, numbered in one pass over the queued
    jobs in start order (the ``(status, created_at, id)`` index): the same numbers as
    :func:`queue_position_column` (ids are unique, so the rank of ``(created_at, id)`` is one plus
    the count ahead), at the cost of one read of the queue per page instead of one count of the
    jobs ahead per queued row on the page (a page of 100 queued jobs in a queue of 1,962 read
    1,465 pages; bench/api_load.py). Its own alias keeps it apart from the page's ``jobs``."""
    queued = aliased(Job, name="queued_jobs")
    return (select(queued.id.label("job_id"),
                   func.row_number().over(order_by=(queued.created_at, queued.id))
                   .label("position"))
            .where(queued.status == JobStatus.QUEUED)
            .subquery("queue_positions"))


def queue_position(session: Session, job: Job) -> int | None:
    """1 for the next queued job to start, 2 for the one after, ...; None unless queued."""
    if job.status != JobStatus.QUEUED:
        return None
    position = session.execute(
        select(queue_position_column()).where(Job.id == job.id)).scalar_one_or_none()
    return int(position) if position is not None else None


def list_jobs(
    session: Session,
    *,
    status: str | Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    limit: int = 50,
    cursor: str | None = None,
    project_id: str | None = None,
    with_spec: bool = True,
    with_stages: bool = True,
) -> JobPage:
    """Jobs, newest first, ``limit`` per page; ``next_cursor`` fetches the next page (None at the
    end). ``status`` filters by one status or several; ``labels`` keeps jobs carrying every given
    ``key=value``; ``project_id`` keeps one project's jobs. Paged as :mod:`persistence.pages`
    says (:class:`~persistence.pages.InvalidCursor` for a cursor not issued for jobs).

    A constant number of statements whatever ``limit`` is: one for the jobs and their queue
    positions, one for the labels, and one for the stages when ``with_stages``. Without
    ``with_spec`` the ``spec`` column (the full config, the bulk of a row) is not read. The
    jobs are :class:`JobSummary` values read as plain rows: building ORM objects took most of a
    50-job page's time when profiled."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    statuses = None if status is None else [status] if isinstance(status, str) else list(status)
    # A page that can hold no queued job numbers no queue: its positions are all None.
    numbered = statuses is None or JobStatus.QUEUED in statuses
    query = _summary_query(with_spec, page=numbered)
    if statuses is not None:
        query = query.where(Job.status.in_(statuses))
    # The list a cursor belongs to: the project and the filters, in a canonical order (the
    # same statuses or labels given in another order are the same list).
    binding = list_binding(project_id, ",".join(sorted(set(statuses or []))),
                           ",".join(f"{k}:{v}" for k, v in sorted((labels or {}).items())))
    if project_id is not None and labels:
        entries = _labelled_entries(project_id, labels, statuses, cursor, limit, binding)
        # The page's jobs by id. Their project is checked again, but as no index condition:
        # ``project_id = ...`` would let the planner read all the project's jobs by their
        # project index and hash them (it did, for 5,000), instead of the page's by id.
        query = (query.join(entries, entries.c.job_id == Job.id)
                 .where(Job.project_id.is_not_distinct_from(project_id))
                 .order_by(entries.c.created_at.desc(), entries.c.job_id.desc()))
    else:
        if project_id is not None:
            query = query.where(Job.project_id == project_id)
        for key, value in (labels or {}).items():
            query = query.where(
                select(JobLabel.job_id)
                .where(JobLabel.job_id == Job.id, JobLabel.key == key, JobLabel.value == value)
                .exists()
            )
        if cursor is not None:
            query = query.where(before_cursor("jobs", cursor, Job.created_at, Job.id, binding))
        query = query.order_by(Job.created_at.desc(), Job.id.desc())
    query = query.limit(limit + 1)
    page = page_of("jobs", _read_summaries(session, query, with_spec=with_spec,
                                           with_stages=with_stages), limit,
                   lambda job: (job.created_at, job.id), binding)
    return JobPage(page.items, page.next_cursor)


def _labelled_entries(project_id: str, labels: Mapping[str, str], statuses: list[str] | None,
                      cursor: str | None, limit: int, binding: str) -> Subquery:
    """The ids and instants of the project's jobs on the page after ``cursor`` carrying every
    label, newest first, ``limit + 1`` of them: a walk of the first label's entries in the
    project (ix_job_labels_project_id_key_value_created_at_job_id, from the cursor), each
    checked for the other labels (in the project) and ``statuses``. The labels hold copies of
    their job's project and ``created_at`` (migration 0024), so the order and the cursor are
    the list's. A subquery with its own LIMIT: joined directly, the planner read the label's
    whole range in the project to number the queue before sorting (500 entries and their jobs
    for a page of 100). Filtering the jobs by an EXISTS per label before read every job
    carrying the label in every project, or the project's jobs one by one probing each."""
    (key, value), *others = labels.items()
    walked = aliased(JobLabel, name="walked")
    entries = select(walked.job_id, walked.created_at).where(
        walked.project_id == project_id, walked.key == key, walked.value == value)
    for other_key, other_value in others:
        other = aliased(JobLabel)
        # The project named again: the planner may then read the other label's entries in
        # the project (the same index) rather than every project's (it read all 40,000).
        entries = entries.where(select(other.job_id).where(
            other.job_id == walked.job_id, other.project_id == project_id,
            other.key == other_key, other.value == other_value).exists())
    if statuses is not None:
        job = aliased(Job)
        entries = entries.where(select(job.id).where(
            job.id == walked.job_id, job.status.in_(statuses)).exists())
    if cursor is not None:
        entries = entries.where(before_cursor("jobs", cursor, walked.created_at, walked.job_id,
                                              binding))
    return (entries.order_by(walked.created_at.desc(), walked.job_id.desc()).limit(limit + 1)
            .subquery("labelled"))


def get_job_summary(session: Session, job_id: str) -> JobSummary:
    """The job by id with its spec, labels, stages and queue position, read as plain rows in
    three statements; :class:`JobNotFound`."""
    found = _read_summaries(session, _summary_query(True).where(Job.id == job_id),
                            with_spec=True, with_stages=True)
    if not found:
        raise JobNotFound(job_id)
    return found[0]


def _summary_query(with_spec: bool, *, page: bool = False) -> Select[Any]:
    """The summaries' query. ``page`` (a list page) joins the positions of the whole queue, read
    once (:func:`_queue_positions`); one job counts the jobs ahead of it, fewer than the queue."""
    columns = [*_SUMMARY_COLUMNS, Job.spec] if with_spec else list(_SUMMARY_COLUMNS)
    if not page:
        return select(*columns, queue_position_column())
    positions = _queue_positions()
    return (select(*columns, positions.c.position.label("queue_position"))
            .select_from(Job).outerjoin(positions, positions.c.job_id == Job.id))


def _read_summaries(session: Session, query: Select[Any], *, with_spec: bool,
                    with_stages: bool) -> list[JobSummary]:
    """Run ``query`` (from :func:`_summary_query`) and read the labels (and stages) of the jobs
    it returns: one statement each, whatever the number of jobs."""
    rows = list(session.execute(query).mappings())
    ids = [row["id"] for row in rows]
    labels_of: dict[str, dict[str, str]] = {job_id: {} for job_id in ids}
    stages_of: dict[str, list[StageSummary]] | None = None
    if ids:
        for job_id, key, value in by_code_point(session.execute(
                select(JobLabel.job_id, JobLabel.key, JobLabel.value)
                .where(JobLabel.job_id.in_(ids))).tuples(), lambda row: row[1]):
            labels_of[job_id][key] = value
        if with_stages:
            stages_of = {job_id: [] for job_id in ids}
            for stage in session.execute(
                    select(*_STAGE_COLUMNS).where(JobStage.job_id.in_(ids))
                    .order_by(JobStage.job_id, JobStage.position)).mappings():
                stages_of[stage["job_id"]].append(
                    StageSummary(**{name: stage[name] for name in _STAGE_NAMES}))
    return [
        JobSummary(**{name: row[name] for name in _SUMMARY_NAMES},
                   spec=row["spec"] if with_spec else None,
                   queue_position=(int(row["queue_position"])
                                   if row["queue_position"] is not None else None),
                   label_dict=labels_of[row["id"]],
                   stages=stages_of[row["id"]] if stages_of is not None else None)
        for row in rows
    ]


# --------------------------------------------------------------------------------------------
# Events and results
# --------------------------------------------------------------------------------------------
def append_event(session: Session, job_id: str, kind: str, payload: Mapping[str, Any],
                 *, now: datetime | None = None) -> JobEvent:
    """Add one event to the job's log (JSON ``payload``)."""
    with transaction(session):
        event = log_event(session, job_id, kind, payload, now or utcnow())
    return event


def list_events(session: Session, job_id: str, *, after_id: int = 0,
                limit: int = 100) -> list[JobEvent]:
    """The job's events with ``id > after_id``, oldest first (``after_id`` is the cursor)."""
    query = (select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_id)
             .order_by(JobEvent.id).limit(limit))
    return list(session.execute(query).scalars())


def get_mrc_rows(session: Session, job_id: str) -> list[MRCRow]:
    """The MRC table in the order the pipeline produced it."""
    query = select(MRCRow).where(MRCRow.job_id == job_id).order_by(MRCRow.position)
    return list(session.execute(query).scalars())


def get_epoch_metrics(session: Session, job_id: str) -> list[EpochMetric]:
    """The fine-tuning epochs, first to last."""
    query = select(EpochMetric).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch)
    return list(session.execute(query).scalars())


def get_interpolation_points(session: Session, job_id: str) -> list[InterpolationPoint]:
    """The interpolation curve in α order (as the pipeline measured it)."""
    query = (select(InterpolationPoint).where(InterpolationPoint.job_id == job_id)
             .order_by(InterpolationPoint.position))
    return list(session.execute(query).scalars())


def get_sweep_candidates(session: Session, job_id: str) -> list[SweepCandidate]:
    """A sweep's (module, lr) candidates in the sweep's order (none for a one-candidate job)."""
    query = (select(SweepCandidate).where(SweepCandidate.job_id == job_id)
             .order_by(SweepCandidate.candidate))
    return list(session.execute(query).scalars())


def list_artifacts(session: Session, job_id: str) -> list[Artifact]:
    """The job's artifacts by name."""
    query = select(Artifact).where(Artifact.job_id == job_id)
    return by_code_point(session.execute(query).scalars(), lambda artifact: artifact.name)


def get_artifact(session: Session, job_id: str, name: str) -> Artifact | None:
    """One artifact by name, or None."""
    return session.get(Artifact, (job_id, name))


# --------------------------------------------------------------------------------------------
# Cancellation
# --------------------------------------------------------------------------------------------
def request_cancel(session: Session, job_id: str, *, now: datetime | None = None,
                   actor: Actor | None = None) -> Job:
    """Ask for the job to stop. A queued job, or a running one that no worker holds right now
    (between stages; a stage handed to its MRC shards or sweep candidates is held while one of
    them runs), is cancelled at once (failed instead when a part's failure is pending:
    :func:`persistence.transactions.end_stopped_job`); otherwise ``cancel_requested`` is set and
    the worker stops at its next batch boundary. :class:`JobAlreadyFinished` if the job ended
    (nothing recorded); else ``actor``'s ``job.cancelled`` is recorded with the request."""
    now = now or db_now(session)
    with transaction(session):
        job = load_job(session, job_id, for_update=True)
        if job.status in TERMINAL_STATUSES:
            raise JobAlreadyFinished(job_id, job.status)
        stages = load_stages(session, job_id)
        held = work_is_held(session, job_id, stages, now)
        job.cancel_requested = True
        touch(job, now)
        if actor is not None:
            record_audit_event(session, actor, "job.cancelled", project_id=job.project_id,
                               resource_id=job_id, details={"status": job.status}, now=now)
        if held:
            log_event(session, job_id, EventKind.CANCEL_REQUESTED, {"stage": job.stage}, now)
        else:
            end_stopped_job(session, job, stages, now)
    return job
