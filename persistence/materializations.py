"""Weights at any α after a job, without retraining: the rows of ``materializations``.

The API records a request (:func:`request_materialization`) and queues the worker task, which
claims it under a lease (:func:`start_materialization`, the lease of :mod:`persistence.leases`,
renewed by :func:`renew_materialization_lease` from a heartbeat thread), writes
``tuned@<α>.safetensors`` and records it as a job artifact together with the accuracies in one
transaction (:func:`finish_materialization`), or records the error
(:func:`fail_materialization`); both only while the worker still holds the lease. One row per α of
a job: asking again for an α already made (or being made) returns that row instead of doing the
work twice.

A worker that dies leaves its row ``running`` under a lease that expires: the workers' recovery
loop queues it again (:func:`materializations_to_redispatch`) until it has been claimed
``max_attempts`` times, then fails it; asking for that α again takes it over at once. A late
original worker then finds its lease gone and records nothing. A row whose message was lost
before any worker took it stays ``queued`` with no lease to expire: the same loop sends it again
once it has waited ``QUEUED_RESEND_AFTER_SECONDS`` since its message was last sent
(``dispatched_at``, :mod:`persistence.resend`); the copy that comes second finds it claimed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from persistence import leases, resend
from persistence.audit import Actor, record_audit_event
from persistence.db_clock import db_now
from persistence.models import (
    Artifact,
    Job,
    JobStatus,
    Materialization,
    MaterializationStatus,
)
from persistence.pages import Page, list_binding, newest_first
from persistence.records import hold_stored_bytes, materialization_bytes
from persistence.stages import ArtifactRecord, LeaseLost
from persistence.storage_ledger import artifact_written, settle_materialization
from persistence.transactions import (
    JobNotFound,
    PersistenceError,
    load_job,
    lock_project,
    storable_text,
    transaction,
)


class JobNotSucceeded(PersistenceError):
    """Only a succeeded job has the stored θ_FT that materializing needs (HTTP 409)."""

    code = "job_not_succeeded"


class MaterializationNotFound(PersistenceError):
    code = "materialization_not_found"


class MaterializationRunning(PersistenceError):
    """An α being made without evaluation by a live worker was asked again with it (HTTP 409):
    its worker has decided already, and queueing it again would have a second worker make the
    same weights alongside the first (whose end would then swallow the second's evaluation). One
    whose worker's lease expired is taken over instead."""

    code = "materialization_running"

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is being made without evaluation; ask again with evaluate "
                         "once it has finished")


class TooManyPendingMaterializations(PersistenceError):
    """The project already has ``limit`` materializations queued or running (HTTP 429): each
    is worker time (an evaluated one runs the attack over the test split), and before this
    limit only the stored-bytes quota bounded how many one client could queue at once."""

    code = "quota_exceeded"

    def __init__(self, pending: int, limit: int) -> None:
        super().__init__(f"the project has {pending} materializations queued or running, the "
                         f"most it may have (MATERIALIZE_MAX_PENDING = {limit}); ask again once "
                         "one has finished")
        self.pending, self.limit = pending, limit


#: Significant digits of a materialized α: the artifact is named by them, so two requests
#: that agree to this many digits are one materialization.
ALPHA_DIGITS = 6


def canonical_alpha(alpha: float) -> float:
    """α rounded to :data:`ALPHA_DIGITS` significant digits: the α the weights are made at.

    Without it the row kept the α of whichever request came first, and a later request that
    named the same artifact (0.3 after 0.3000001) got weights made at an α it did not ask for,
    with no sign of it. Negative zero is zero: ``-0.0`` (a valid JSON number, within α's
    range) was a second materialization of θ_0, named ``tuned@-0.safetensors``."""
    # Adding 0.0 turns -0.0 into 0.0 and leaves every other number as it is (IEEE 754).
    return float(f"{alpha:.{ALPHA_DIGITS}g}") + 0.0


def artifact_name(alpha: float) -> str:
    """``tuned@<α>.safetensors`` with α in its shortest form (``tuned@0.35.safetensors``)."""
    return f"tuned@{alpha:.{ALPHA_DIGITS}g}.safetensors"


@dataclass(frozen=True)
class MaterializationRequest:
    row: Materialization
    must_dispatch: bool  # True: the caller queues the worker task (after this committed)


def request_materialization(session: Session, job_id: str, alpha: float, *, evaluate: bool,
                            request_id: str | None = None, now: datetime | None = None,
                            max_stored_bytes: int | None = None,
                            max_pending: int | None = None,
                            actor: Actor | None = None) -> MaterializationRequest:
    """Record a request for θ_α of a succeeded job. An α already done (with evaluation, when it
    is asked now) or in progress is returned as it is; a failed one, or one done without the
    evaluation asked now, is queued again.

    New weights (a new α, or a failed one asked again) reserve the size of the job's θ_FT
    against the project's ``max_stored_bytes``, counted under the project's lock like an
    upload's (:func:`persistence.records.stored_bytes` counts queued and running ones), so
    neither repeated nor concurrent requests can pass it: :class:`StorageQuotaReached`. Each
    request that queues work counts against ``max_pending`` queued or running materializations
    of the project, under the same lock: :class:`TooManyPendingMaterializations`. A request
    that queues work records ``actor``'s ``materialization.requested`` in its transaction; one
    answered with the row as it is records nothing."""
    now = now or db_now(session)
    alpha = canonical_alpha(alpha)
    name = artifact_name(alpha)
    with transaction(session):
        requested = _request_in_transaction(session, job_id, alpha, name, evaluate=evaluate,
                                            request_id=request_id, now=now,
                                            max_stored_bytes=max_stored_bytes,
                                            max_pending=max_pending)
        if actor is not None and requested.must_dispatch:
            job = session.get(Job, job_id)  # loaded above: no statement
            record_audit_event(session, actor, "materialization.requested",
                               project_id=job.project_id if job else None,
                               resource_id=requested.row.id,
                               details={"job_id": job_id, "alpha": alpha,
                                        "evaluate": evaluate}, now=now)
    return requested


def _request_in_transaction(session: Session, job_id: str, alpha: float, name: str, *,
                            evaluate: bool, request_id: str | None, now: datetime,
                            max_stored_bytes: int | None, max_pending: int | None
                            ) -> MaterializationRequest:
    """:func:`request_materialization`'s work, in the caller's transaction."""
    project_id = load_job(session, job_id).project_id
    if project_id is not None:
        # Before looking for the α: a request for the same α sent at the same moment, which
        # held the lock first, has then recorded (or queued again) its row, and this one is
        # answered with it instead of being counted as one more against the limits (a 429
        # or 413 for an α already asked for) or queueing it a second time.
        lock_project(session, project_id)
    job = _held_job(session, job_id)
    if job.status != JobStatus.SUCCEEDED:
        raise JobNotSucceeded(f"job {job_id} is {job.status}; weights at another α can be made "
                              "once it has succeeded")
    # Row-locked: a worker starts and finishes it under the same lock, so its status cannot
    # change between the checks below and this request's write.
    row = _by_name(session, job_id, name, for_update=True)
    if row is not None:
        enough = row.evaluate or not evaluate
        if row.status == MaterializationStatus.RUNNING and not leases.is_live(row, now):
            # Its worker died (the lease expired before the recovery loop saw it): queued
            # again now, with what is asked now. It still counts as pending and holds its
            # reservation, so neither limit is counted again; a worker of the old attempt
            # that is merely late finds its lease gone and records nothing.
            _requeue(row, evaluate, request_id, now)
            settle_materialization(session, row, job.project_id)
            return MaterializationRequest(row, True)
        if row.status == MaterializationStatus.QUEUED:
            # Not started: its worker reads the row when it starts (after this commits), so
            # an evaluation asked now joins it; its message is on the queue already (or, if
            # it was lost, is sent again by the workers' recovery loop).
            row.evaluate = row.evaluate or evaluate
            return MaterializationRequest(row, False)
        if row.status == MaterializationStatus.RUNNING and not enough:
            raise MaterializationRunning(name)
        if row.status != MaterializationStatus.FAILED and enough:
            return MaterializationRequest(row, False)
        _check_pending(session, job, max_pending)
        if row.status == MaterializationStatus.FAILED:
            _hold(session, job, max_stored_bytes)
        _requeue(row, evaluate, request_id, now)
        settle_materialization(session, row, job.project_id)
        return MaterializationRequest(row, True)
    _check_pending(session, job, max_pending)
    _hold(session, job, max_stored_bytes)
    row = Materialization(job_id=job_id, alpha=alpha, evaluate=evaluate, artifact_name=name,
                          status=MaterializationStatus.QUEUED, request_id=request_id,
                          created_at=now, dispatched_at=now)
    session.add(row)
    try:
        session.flush()
        settle_materialization(session, row, job.project_id)
    except IntegrityError:
        # A concurrent request for the same α won: answer with its row.
        session.rollback()
        existing = _by_name(session, job_id, name)
        if existing is None:
            raise
        return MaterializationRequest(existing, False)
    return MaterializationRequest(row, True)


def _requeue(row: Materialization, evaluate: bool, request_id: str | None,
             now: datetime) -> None:
    """Queue ``row`` again as a new request (its attempts start over: the user asked again); the
    caller sends its message once this has committed."""
    row.status = MaterializationStatus.QUEUED
    row.dispatched_at = now
    row.evaluate = row.evaluate or evaluate
    row.error_message = None
    row.finished_at = None
    row.request_id = request_id
    row.lease_owner = None
    row.lease_expires_at = None
    row.attempts = 0


def _held_job(session: Session, job_id: str) -> Job:
    """The job, held (FOR KEY SHARE) until the transaction ends: a DELETE of it at the same
    moment waits until the request's row is written (and then deletes it with the job), or went
    first (:class:`JobNotFound`, a 404), instead of the row's insert breaking its foreign key
    (a 500)."""
    job = session.execute(
        select(Job).where(Job.id == job_id).with_for_update(read=True, key_share=True)
        .execution_options(populate_existing=True)).scalar_one_or_none()
    if job is None:
        raise JobNotFound(job_id)
    return job


def _check_pending(session: Session, job: Job, limit: int | None) -> None:
    """Lock the project and raise :class:`TooManyPendingMaterializations` unless one more
    queued materialization keeps it within ``limit`` (None: no limit)."""
    if limit is None or job.project_id is None:
        return
    lock_project(session, job.project_id)
    pending = count_pending_materializations(session, job.project_id)
    if pending >= limit:
        raise TooManyPendingMaterializations(pending, limit)


def count_pending_materializations(session: Session, project_id: str) -> int:
    """The project's queued and running materializations, as ``max_pending`` counts them (and
    GET /v1/usage shows them)."""
    return int(session.execute(
        select(func.count()).select_from(Materialization).join(Job)
        .where(Job.project_id == project_id,
               Materialization.status.in_([MaterializationStatus.QUEUED,
                                           MaterializationStatus.RUNNING]))).scalar_one())


def _hold(session: Session, job: Job, limit: int | None) -> None:
    hold_stored_bytes(session, job.project_id, materialization_bytes(session, job.id), limit)


def _by_name(session: Session, job_id: str, name: str, *,
             for_update: bool = False) -> Materialization | None:
    query = (select(Materialization)
             .where(Materialization.job_id == job_id, Materialization.artifact_name == name)
             .execution_options(populate_existing=True))
    if for_update:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def get_materialization(session: Session, job_id: str, materialization_id: str) -> Materialization:
    row = session.get(Materialization, materialization_id, populate_existing=True)
    if row is None or row.job_id != job_id:
        raise MaterializationNotFound(f"job {job_id} has no materialization '{materialization_id}'")
    return row


def list_materializations(session: Session, job_id: str) -> list[Materialization]:
    query = (select(Materialization).where(Materialization.job_id == job_id)
             .order_by(Materialization.alpha))
    return list(session.execute(query).scalars())


def page_materializations(session: Session, job_id: str, *, limit: int,
                          cursor: str | None = None) -> Page[Materialization]:
    """One page of the job's materializations, newest first (:mod:`persistence.pages`)."""
    return newest_first(session, "materializations",
                        select(Materialization).where(Materialization.job_id == job_id),
                        Materialization.created_at, Materialization.id, limit, cursor,
                        list_binding(job_id))


def start_materialization(session: Session, materialization_id: str, *, owner: str,
                          lease_seconds: float, max_attempts: int,
                          now: datetime | None = None) -> Materialization | None:
    """Claim the request for ``owner`` (a worker id) for ``lease_seconds`` and mark it running:
    granted if it is queued, or running under an expired lease (its worker died and this is its
    message sent again), and was claimed fewer than ``max_attempts`` times. None otherwise (done
    already, held by a live worker, unknown); one out of attempts is failed now."""
    now = now or db_now(session)
    with transaction(session):
        claimed = leases.rows_affected(session, update(Materialization)
            .where(Materialization.id == materialization_id,
                   leases.claimable(Materialization, waiting=MaterializationStatus.QUEUED,
                                    max_attempts=max_attempts, now=now))
            .values(**leases.claimed_values(Materialization, owner=owner,
                                            lease_seconds=lease_seconds, now=now))
            .execution_options(synchronize_session=False))
        # Locked (held already if claimed): two workers finding it out of attempts at once end
        # it one after the other, so its reservation leaves the ledger once.
        row = session.get(Materialization, materialization_id, populate_existing=True,
                          with_for_update=True)
        if row is None:
            return None
        if claimed != 1:
            if row.status in (MaterializationStatus.QUEUED, MaterializationStatus.RUNNING) \
                    and not leases.is_live(row, now) and row.attempts >= max_attempts:
                _exhaust(row, max_attempts, now)
                settle_materialization(session, row)
            return None
        row.started_at = row.started_at or now
    return row


def hand_back_materialization(session: Session, materialization_id: str, *, owner: str,
                              now: datetime | None = None) -> None:
    """Queue the request again because its worker is shutting down (a warm shutdown), its claim
    not counted, for another worker; the caller sends its message once this has committed.
    :class:`persistence.stages.LeaseLost` if ``owner`` does not hold it,
    :class:`MaterializationNotFound` if it is gone."""
    now = now or db_now(session)
    with transaction(session):
        row = _held(session, materialization_id, owner)
        row.status = MaterializationStatus.QUEUED
        row.lease_owner = None
        row.lease_expires_at = None
        row.attempts = max(row.attempts - 1, 0)
        row.dispatched_at = now


def renew_materialization_lease(session: Session, materialization_id: str, *, owner: str,
                                lease_seconds: float, now: datetime | None = None) -> bool:
    """Extend ``owner``'s lease; False once it no longer holds it (another worker took the
    request over, or its job was deleted)."""
    now = now or db_now(session)
    with transaction(session):
        return leases.renew(session, Materialization,
                            [Materialization.id == materialization_id], owner=owner,
                            lease_seconds=lease_seconds, now=now)


def _held(session: Session, materialization_id: str, owner: str | None) -> Materialization:
    """The row, locked; :class:`MaterializationNotFound` if it is gone (its job was deleted),
    :class:`persistence.stages.LeaseLost` if ``owner`` (None: anyone) does not hold it."""
    row = session.get(Materialization, materialization_id, with_for_update=True,
                      populate_existing=True)
    if row is None:
        raise MaterializationNotFound(f"no materialization '{materialization_id}'")
    if owner is not None and (row.status != MaterializationStatus.RUNNING
                              or row.lease_owner != owner):
        raise LeaseLost(f"worker {owner} no longer holds materialization {materialization_id} "
                        f"({row.artifact_name}); its result was not recorded")
    return row


def finish_materialization(session: Session, materialization_id: str, artifact: ArtifactRecord,
                           *, owner: str, clean_accuracy: float | None,
                           robust_accuracy: float | None,
                           now: datetime | None = None) -> Materialization:
    """Record the weights as a job artifact and the request as succeeded, in one transaction,
    if ``owner`` still holds its lease: else :class:`persistence.stages.LeaseLost` and nothing
    is written (a worker taken over while late must not overwrite its successor's result).
    :class:`MaterializationNotFound` if the job was deleted meanwhile."""
    now = now or db_now(session)
    with transaction(session):
        job = _held_job_of(session, materialization_id)
        row = _held(session, materialization_id, owner)
        before = session.execute(select(Artifact.size).where(
            Artifact.job_id == row.job_id, Artifact.name == artifact.name)).scalar_one_or_none()
        session.merge(Artifact(job_id=row.job_id, name=artifact.name,
                               storage_key=artifact.storage_key, size=artifact.size,
                               sha256=artifact.sha256, content_type=artifact.content_type,
                               created_at=now))
        artifact_written(session, job.project_id, before, artifact.size)
        row.status = MaterializationStatus.SUCCEEDED
        row.clean_accuracy = clean_accuracy
        row.robust_accuracy = robust_accuracy
        row.finished_at = now
        row.lease_owner = None
        row.lease_expires_at = None
        settle_materialization(session, row, job.project_id)
    return row


def recorded_materialization(session: Session, materialization_id: str, *,
                             attempt: int) -> Materialization | None:
    """Whether a :func:`finish_materialization` of the claim ``attempt`` committed although its
    caller saw an error (a database outage that took the commit's answer): the row it made
    succeeded, or None (refused, never reached the database, or a takeover's: a later claim
    counts a later attempt). Reads only; :class:`MaterializationNotFound` if it is gone."""
    row = session.get(Materialization, materialization_id, populate_existing=True)
    if row is None:
        raise MaterializationNotFound(f"no materialization '{materialization_id}'")
    if row.status != MaterializationStatus.SUCCEEDED or row.attempts != attempt:
        return None
    return row


def recorded_materialization_hand_back(session: Session, materialization_id: str, *,
                                       attempt: int) -> bool | None:
    """Whether a :func:`hand_back_materialization` of the claim ``attempt`` committed although
    its caller saw an error: the row queued again with that claim given back (``attempt`` - 1
    attempts; a takeover's claim counts a later attempt, a re-sent expired lease keeps its
    count); else None (also when the row is gone: the hand-back then says so). Reads only."""
    row = session.get(Materialization, materialization_id, populate_existing=True)
    if (row is None or row.status != MaterializationStatus.QUEUED
            or row.attempts != max(attempt - 1, 0)):
        return None
    return True


def recorded_materialization_failure(session: Session, materialization_id: str, message: str, *,
                                     attempt: int) -> bool | None:
    """Whether a :func:`fail_materialization` of the claim ``attempt`` committed although its
    caller saw an error: the row failed at that attempt with that ``message``; else None (also
    when the row is gone: the failure then leaves it, as it does). Reads only."""
    row = session.get(Materialization, materialization_id, populate_existing=True)
    if (row is None or row.status != MaterializationStatus.FAILED or row.attempts != attempt
            or row.error_message != storable_text(message)[:4000]):
        return None
    return True


def _held_job_of(session: Session, materialization_id: str) -> Job:
    """The job of the materialization, held (FOR KEY SHARE) before the row itself, the order
    of :func:`request_materialization` and of a job's DELETE (job, then its rows): the DELETE
    waits until this transaction has written the artifact and the ledger's change, and sums
    what this wrote. :class:`MaterializationNotFound` once the row or its job is gone."""
    job_id = session.execute(select(Materialization.job_id)
                             .where(Materialization.id == materialization_id)).scalar_one_or_none()
    try:
        if job_id is None:
            raise JobNotFound(materialization_id)
        return _held_job(session, job_id)
    except JobNotFound:
        raise MaterializationNotFound(f"no materialization '{materialization_id}'") from None


def fail_materialization(session: Session, materialization_id: str, message: str, *,
                         owner: str | None = None, now: datetime | None = None) -> None:
    """Record the request as failed with ``message``. With ``owner`` (a worker), only while it
    holds the lease, else :class:`persistence.stages.LeaseLost`; a row already gone is left."""
    with transaction(session):
        try:
            row = _held(session, materialization_id, owner)
        except MaterializationNotFound:
            return
        _end_failed(row, message, now or db_now(session))
        settle_materialization(session, row)


def _end_failed(row: Materialization, message: str, now: datetime) -> None:
    row.status = MaterializationStatus.FAILED
    row.error_message = storable_text(message)[:4000]
    row.finished_at = now
    row.lease_owner = None
    row.lease_expires_at = None


def _exhaust(row: Materialization, max_attempts: int, now: datetime) -> None:
    _end_failed(row, f"the worker making {row.artifact_name} stopped {row.attempts} times "
                f"without finishing (MAX_STAGE_ATTEMPTS={max_attempts}): it was killed, ran out "
                "of memory or lost its machine each time. Ask for this alpha again to retry.",
                now)


def materializations_to_redispatch(session: Session, *, max_attempts: int, resend_after: float,
                                   now: datetime | None = None) -> list[str]:
    """The ids of materializations whose message must be sent again, marked as sent now: running
    ones whose lease expired (their worker died), queued again now, and queued ones still waiting
    ``resend_after`` seconds after their message was last sent (it was lost before any worker
    took it, or waits in a long queue; :mod:`persistence.resend`). One claimed ``max_attempts``
    times already is failed instead (the API shows its error). Every worker runs this loop; the
    rows are locked and re-checked, so each is sent once per pass of one worker."""
    now = now or db_now(session)
    expired = and_(Materialization.status == MaterializationStatus.RUNNING,
                   # No lease at all: running since before migration 0019; its worker is gone.
                   or_(Materialization.lease_expires_at.is_(None),
                       Materialization.lease_expires_at < now))
    with transaction(session):
        rows = session.execute(
            select(Materialization).where(expired).order_by(Materialization.created_at)
            .with_for_update(skip_locked=True).execution_options(populate_existing=True)
        ).scalars().all()
        found = []
        for row in rows:
            if row.attempts >= max_attempts:
                _exhaust(row, max_attempts, now)
                settle_materialization(session, row)
                continue
            row.status = MaterializationStatus.QUEUED
            row.lease_owner = None
            row.lease_expires_at = None
            row.dispatched_at = now
            found.append(row.id)
        session.flush()  # the rows queued again above are not overdue: sent now
        waiting = session.execute(
            select(Materialization.id)
            .where(resend.overdue(Materialization, waiting=MaterializationStatus.QUEUED,
                                  after=resend_after, now=now))
            .order_by(Materialization.created_at)).scalars().all()
        found.extend(row_id for row_id in waiting if resend.take_overdue(
            session, Materialization, [Materialization.id == row_id],
            waiting=MaterializationStatus.QUEUED, after=resend_after, now=now))
    return found
