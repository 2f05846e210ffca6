"""The stage-lease protocol the workers follow (``worker/tasks.py``, ``worker/runtime.py``):
claiming a stage, renewing its lease, reporting progress, finishing, releasing or failing it,
ending a job the user cancelled, and finding stages whose message must be sent again.

Who may run a stage is decided here, by a lease in ``job_stages``: :func:`claim_stage` is a single
conditional UPDATE (``status = 'pending'`` or an expired lease), so of two workers only one can win,
on SQLite (one writer at a time) as on Postgres (the second UPDATE re-checks its WHERE clause once
the first commits). :func:`finish_stage` writes a stage's outputs and marks it done in one
transaction, and only while the caller still holds the lease, so outputs are written exactly once.
Every function that writes is one transaction, taking its locks in the order jobs → job_stages
(see :mod:`persistence.transactions`), so transactions cannot deadlock.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, literal, select, update
from sqlalchemy.orm import Session

from persistence import leases, resend
from persistence.db_clock import db_now
from persistence.models import (
    STAGE_ORDER,
    TERMINAL_STATUSES,
    Artifact,
    Checkpoint,
    Dataset,
    EpochMetric,
    InterpolationPoint,
    Job,
    JobEvent,
    JobStage,
    JobStatus,
    MRCRow,
    StageName,
    StageStatus,
)
from persistence.storage_ledger import artifact_written, settle_job_reservation
from persistence.transactions import (
    EventKind,
    PersistenceError,
    end_stopped_job,
    fail_now,
    fail_when_parts_stop,
    lease_is_live,
    load_job,
    load_stages,
    log_event,
    storable_text,
    touch,
    transaction,
    work_is_held,
)

ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
class LeaseLost(PersistenceError):
    """The worker no longer holds the stage's lease (or the job ended); it must stop, unwritten."""

    code = "lease_lost"


class JobEnded(PersistenceError):
    """The job had ended before the worker running it could end it itself (the recovery loop
    failed it past its time limit while the worker was late to its own check): nothing was
    written, and the worker must not report the end as its own."""

    code = "job_ended"


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------
class ClaimOutcome(enum.StrEnum):
    CLAIMED = "claimed"  # the caller holds the lease and must run the stage
    DONE = "done"  # the stage finished before; enqueue the next one
    HELD = "held"  # another worker holds a live lease
    NOT_READY = "not_ready"  # an earlier stage has not finished
    INACTIVE = "inactive"  # the job ended (or was cancelled now)
    EXHAUSTED = "exhausted"  # the stage used up its attempts; the job was failed now


@dataclass(frozen=True)
class StageClaim:
    outcome: ClaimOutcome
    job: Job
    attempt: int = 0  # the attempt number (1-based) when CLAIMED
    #: When CLAIMED, each stage's latest claim (stage -> attempts): this one's, and for the
    #: stages done, the attempt whose outputs were recorded (the keys of their files).
    attempts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ClaimTerms:
    """Who claims a stage, and on what terms (see :func:`claim_stage`)."""

    owner: str
    lease_seconds: float
    max_attempts: int


@dataclass(frozen=True)
class ArtifactRecord:
    """An object already written to the store, to be recorded as a job artifact."""

    name: str
    storage_key: str
    size: int
    sha256: str
    content_type: str


@dataclass
class StageOutputs:
    """What a finished stage records. Row dicts use the pipeline's keys (``name`` or ``module``
    for MRC rows; ``epoch``, ``lr``, ``train_loss``, ... for epochs; ``alpha``,
    ``clean_accuracy``, ``robust_accuracy``, ``robust_accuracy_at_most`` for interpolation
    points)."""

    mrc_rows: Sequence[Mapping[str, Any]] = ()
    epochs: Sequence[Mapping[str, Any]] = ()
    interpolation_points: Sequence[Mapping[str, Any]] = ()
    artifacts: Sequence[ArtifactRecord] = ()
    selected_module: str | None = None
    chosen_alpha: float | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)  # merged into jobs.metrics
    summary: Mapping[str, Any] = field(default_factory=dict)  # payload of stage_finished


_rows_affected = leases.rows_affected


def _stage_index(stage: str) -> int:
    try:
        return STAGE_ORDER.index(StageName(stage))
    except ValueError:
        raise ValueError(f"unknown stage {stage!r}; expected one of {list(STAGE_ORDER)}") from None


def next_stage(stage: str) -> StageName | None:
    """The stage after ``stage``, or None after the last."""
    index = _stage_index(stage) + 1
    return STAGE_ORDER[index] if index < len(STAGE_ORDER) else None


def _load_stage(session: Session, job_id: str, stage: str) -> JobStage:
    query = (select(JobStage).where(JobStage.job_id == job_id, JobStage.stage == stage)
             .execution_options(populate_existing=True))
    return session.execute(query).scalar_one()


# --------------------------------------------------------------------------------------------
# Claiming and holding a stage
# --------------------------------------------------------------------------------------------
def claim_stage(
    session: Session,
    job_id: str,
    stage: str,
    *,
    owner: str,
    lease_seconds: float,
    max_attempts: int,
    now: datetime | None = None,
) -> StageClaim:
    """Try to take ``stage`` of the job for ``owner`` (a worker id) for ``lease_seconds``.

    The lease is granted only if the stage is pending, or running under an expired lease (its
    worker died), and has been claimed fewer than ``max_attempts`` times. On success the job is
    running, ``jobs.stage`` is this stage, attempts are counted and a ``stage_started`` event is
    logged. A stage out of attempts fails the job with ``stage_failed_repeatedly``; a job with a
    pending cancellation and no live lease is cancelled. See :class:`ClaimOutcome`.
    """
    _stage_index(stage)
    now = now or db_now(session)
    with transaction(session), session.no_autoflush:
        job = load_job(session, job_id, for_update=True, relations=False)
        return _claim_locked(session, job, stage, ClaimTerms(owner, lease_seconds, max_attempts),
                             now)


def claim_stage_with_inputs(
    session: Session, job_id: str, stage: str, *, owner: str, lease_seconds: float,
    max_attempts: int, now: datetime | None = None,
) -> tuple[StageClaim, Checkpoint | None, Dataset | None]:
    """:func:`claim_stage`, with the job's checkpoint and dataset rows (None when gone or not
    used) read in the same transaction, in one statement before the claim: the worker needs
    them to run the stage, and reading them after the claim's commit took a transaction of its
    own (its BEGIN, the reads, a ROLLBACK when the session closed)."""
    found = session.execute(
        select(Checkpoint, Dataset).select_from(Job)
        .outerjoin(Checkpoint, Checkpoint.id == Job.checkpoint_id)
        .outerjoin(Dataset, Dataset.id == Job.dataset_id)
        .where(Job.id == job_id)
    ).one_or_none()
    checkpoint, dataset = (found[0], found[1]) if found is not None else (None, None)
    claim = claim_stage(session, job_id, stage, owner=owner, lease_seconds=lease_seconds,
                        max_attempts=max_attempts, now=now)
    return claim, checkpoint, dataset


def _claim_locked(session: Session, job: Job, stage: str, terms: ClaimTerms,
                  now: datetime) -> StageClaim:
    """:func:`claim_stage`'s work inside the caller's transaction, the job's row already locked."""
    job_id, owner, max_attempts = job.id, terms.owner, terms.max_attempts
    if job.status in TERMINAL_STATUSES:
        return StageClaim(ClaimOutcome.INACTIVE, job)
    stages = {row.stage: row for row in load_stages(session, job_id)}
    row = stages[stage]
    if job.cancel_requested and not work_is_held(session, job_id, list(stages.values()), now):
        end_stopped_job(session, job, list(stages.values()), now)
        return StageClaim(ClaimOutcome.INACTIVE, job)
    if row.status == StageStatus.DONE:
        return StageClaim(ClaimOutcome.DONE, job)
    earlier = STAGE_ORDER[: _stage_index(stage)]
    if any(stages[s].status != StageStatus.DONE for s in earlier):
        return StageClaim(ClaimOutcome.NOT_READY, job)

    # The claim returns the attempt it counted and sets the first start: no read of the row
    # after it, nor an UPDATE of its own for started_at.
    claimed = session.execute(
        update(JobStage)
        .where(JobStage.job_id == job_id, JobStage.stage == stage,
               leases.claimable(JobStage, waiting=StageStatus.PENDING,
                                max_attempts=max_attempts, now=now))
        .values(**leases.claimed_values(JobStage, owner=owner,
                                        lease_seconds=terms.lease_seconds, now=now),
                started_at=func.coalesce(JobStage.started_at, _at(now)))
        .returning(JobStage.attempts)
        .execution_options(synchronize_session=False)
    ).scalars().all()
    if len(claimed) != 1:
        row = _load_stage(session, job_id, stage)
        if row.status == StageStatus.DONE:
            return StageClaim(ClaimOutcome.DONE, job)
        if lease_is_live(row, now):
            return StageClaim(ClaimOutcome.HELD, job)
        if row.attempts >= max_attempts:
            fail_now(session, job, row, "stage_failed_repeatedly",
                  f"stage '{stage}' was started {row.attempts} times (MAX_STAGE_ATTEMPTS="
                  f"{max_attempts}) without finishing; its worker crashed or failed each "
                  f"time. Last error: {row.last_error or 'the worker process died'}", now)
            return StageClaim(ClaimOutcome.EXHAUSTED, job)
        return StageClaim(ClaimOutcome.INACTIVE, job)

    attempt = claimed[0]
    # The row read above is stale now; nothing of this transaction reads it again.
    session.expire(row)
    job.status = JobStatus.RUNNING
    job.stage = stage
    job.stage_progress = 0.0
    job.progress_message = None
    job.attempts = job.attempts + 1
    job.started_at = job.started_at or now
    touch(job, now)
    log_event(session, job_id, EventKind.STAGE_STARTED,
              {"stage": stage, "attempt": attempt, "worker": owner}, now)
    attempts = {str(name): other.attempts for name, other in stages.items() if name != stage}
    return StageClaim(ClaimOutcome.CLAIMED, job, attempt, {**attempts, stage: attempt})


def renew_lease(session: Session, job_id: str, stage: str, *, owner: str, lease_seconds: float,
                now: datetime | None = None) -> bool:
    """Extend ``owner``'s lease on the stage; False if ``owner`` no longer holds it."""
    now = now or db_now(session)
    with transaction(session):
        return leases.renew(session, JobStage,
                            [JobStage.job_id == job_id, JobStage.stage == stage],
                            owner=owner, lease_seconds=lease_seconds, now=now)


def update_progress(session: Session, job_id: str, stage: str, fraction: float,
                    message: str | None = None, *, now: datetime | None = None) -> None:
    """Record progress within the running stage (``fraction`` in [0, 1])."""
    now = now or db_now(session)
    with transaction(session):
        _write_progress(session, job_id, stage, fraction, message, now)


def _write_progress(session: Session, job_id: str, stage: str, fraction: float,
                    message: str | None, now: datetime) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.stage == stage)
        .values(stage_progress=min(max(float(fraction), 0.0), 1.0),
                progress_message=storable_text(message)[:500] if message else None, updated_at=now)
        .execution_options(synchronize_session=False)
    )


def set_job_device(session: Session, job_id: str, device: str) -> None:
    """Record the device (``cpu``, ``cuda:0``...) the worker runs the job on."""
    with transaction(session):
        _write_device(session, job_id, device)


def _write_device(session: Session, job_id: str, device: str) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(device=device)
                    .execution_options(synchronize_session=False))


def should_stop(session: Session, job_id: str) -> bool:
    """True when the worker running the job must stop: cancel requested, or the job ended."""
    stop = _must_stop(session, job_id)
    session.commit()  # end the read transaction (SQLite holds its lock until then)
    return stop


def _must_stop(session: Session, job_id: str) -> bool:
    row = session.execute(
        select(Job.cancel_requested, Job.status).where(Job.id == job_id)
    ).one_or_none()
    if row is None:
        return True
    cancel_requested, status = row
    return bool(cancel_requested) or status in TERMINAL_STATUSES


def report_activity(session: Session, job_id: str, stage: str, *,
                    events: Sequence[tuple[str, Mapping[str, Any], datetime]] = (),
                    progress: tuple[float, str | None] | None = None,
                    device: str | None = None, now: datetime | None = None) -> bool:
    """What a running stage reports, in one transaction: its events ``(kind, payload, when)`` in
    order, its latest progress ``(fraction, message)``, the device it runs on (see
    :func:`set_job_device`); returns :func:`should_stop`. One round trip and commit instead of
    one per event, progress write, device write and check.

    A job that has ended gets none of them (True is returned): the recovery loop fails a job
    past its time limit whose worker is late to its own check (a long step, a starved CPU), and
    that worker's reports must not follow the job's ``job_failed``. The job's row is locked
    first (as :func:`fail_job` locks it), so no end commits between the check and the writes."""
    now = now or db_now(session)
    with transaction(session):
        row = session.execute(
            select(Job.cancel_requested, Job.status).where(Job.id == job_id).with_for_update()
        ).one_or_none()
        if row is None or row.status in TERMINAL_STATUSES:
            return True
        for kind, payload, when in events:
            log_event(session, job_id, kind, payload, when)
        if progress is not None:
            _write_progress(session, job_id, stage, progress[0], progress[1], now)
        if device is not None:
            _write_device(session, job_id, device)
        return bool(row.cancel_requested)


# --------------------------------------------------------------------------------------------
# Ending a stage
# --------------------------------------------------------------------------------------------
def finish_stage(session: Session, job_id: str, stage: str, *, owner: str,
                 outputs: StageOutputs, now: datetime | None = None) -> Job:
    """Write the stage's outputs and mark it done, in one transaction, if ``owner`` still holds
    its lease and the job is running; else :class:`LeaseLost` and nothing is written. After the
    last stage the job is ``succeeded``; otherwise ``jobs.stage`` moves to the next stage."""
    job, _ = finish_stage_and_claim_next(session, job_id, stage, owner=owner, outputs=outputs,
                                         now=now)
    return job


def finish_stage_and_claim_next(
    session: Session, job_id: str, stage: str, *, owner: str, outputs: StageOutputs,
    next_terms: ClaimTerms | None = None,
    events: Sequence[tuple[str, Mapping[str, Any], datetime]] = (),
    device: str | None = None, now: datetime | None = None,
) -> tuple[Job, StageClaim | None]:
    """:func:`finish_stage`, and with ``next_terms`` the claim of the next stage in the same
    transaction (:func:`claim_stage`'s rules: a cancellation requested meanwhile ends the job
    instead); returns the job and that claim (None without ``next_terms`` or after the last
    stage). ``events`` (``(kind, payload, when)``, the stage's last reports not yet written)
    come before ``stage_finished``, in the same transaction: nothing is written if the lease
    was lost; so does ``device`` (the job's device, when the stage's reports did not write it).

    A worker that holds the job's prepared run takes the next stage this way instead of sending
    its message and claiming it back: no moment passes with the next stage runnable and no
    message for it, and, should the worker die while running it, its lease expires and the
    recovery loop sends it again, as for any claimed stage."""
    now = now or db_now(session)
    claim: StageClaim | None = None
    # No flush before the commit: the job's row is written once, and the rows and events of the
    # stage and of the next claim go in one INSERT per table (11 statements were 16).
    with transaction(session), session.no_autoflush:
        job = load_job(session, job_id, for_update=True, relations=False)
        if job.status != JobStatus.RUNNING:
            raise LeaseLost(f"job {job_id} is {job.status}; the outputs of stage '{stage}' "
                            "were not recorded")
        done = _rows_affected(session,
            update(JobStage)
            .where(JobStage.job_id == job_id, JobStage.stage == stage,
                   JobStage.lease_owner == owner, JobStage.status == StageStatus.RUNNING)
            .values(status=StageStatus.DONE, lease_owner=None, lease_expires_at=None,
                    finished_at=now)
            .execution_options(synchronize_session=False)
        )
        if done != 1:
            raise LeaseLost(f"worker {owner} no longer holds the lease on stage '{stage}' of "
                            f"job {job_id}; its outputs were not recorded")
        for kind, payload, when in events:
            log_event(session, job_id, kind, payload, when)
        stored = _insert_outputs(session, job, outputs, now)
        if outputs.selected_module is not None:
            job.selected_module = outputs.selected_module
        if outputs.chosen_alpha is not None:
            job.chosen_alpha = outputs.chosen_alpha
        if device is not None:
            job.device = device
        if outputs.metrics:
            # A new dict, so the JSON column is seen as changed.
            job.metrics = {**(job.metrics or {}), **outputs.metrics}
        log_event(session, job_id, EventKind.STAGE_FINISHED, {"stage": stage, **outputs.summary}, now)
        following = next_stage(stage)
        job.stage_progress = 0.0 if following else 1.0
        job.progress_message = None
        touch(job, now)
        if following is None:
            job.status = JobStatus.SUCCEEDED
            job.stage = None
            job.finished_at = now
            log_event(session, job_id, EventKind.JOB_SUCCEEDED, dict(job.metrics or {}), now)
        else:
            job.stage = following
            if next_terms is not None:
                claim = _claim_locked(session, job, following, next_terms, now)
            else:
                # Its message goes out once this commits. (A chained stage is claimed above, or
                # its job ended: no message, and no statement more on the finishing path.)
                _mark_dispatched(session, job_id, following, now)
        # Its artifacts take their bytes from its reservation (all of it once it ended).
        if stored is not None or job.status == JobStatus.SUCCEEDED:
            settle_job_reservation(session, job, artifacts=stored)
    return job, claim


def recorded_finish(session: Session, job_id: str, stage: str, *, owner: str,
                    attempt: int) -> tuple[Job, StageClaim | None] | None:
    """Whether a :func:`finish_stage_and_claim_next` of ``attempt`` committed although its
    caller saw an error (a database outage that took the commit's answer): None if the stage
    is not done at that attempt (the finish was refused, or never reached the database; a
    takeover's claim counts a later attempt). Else what that call would have returned: the job,
    and the next stage's claim it made for ``owner`` (None if it made none). Reads only."""
    job = load_job(session, job_id, relations=False)
    rows = {row.stage: row for row in load_stages(session, job_id)}
    row = rows[stage]
    if row.status != StageStatus.DONE or row.attempts != attempt:
        return None
    following = next_stage(stage)
    held = rows.get(following) if following is not None else None
    if held is None or held.status != StageStatus.RUNNING or held.lease_owner != owner:
        return job, None
    attempts = {str(name): other.attempts for name, other in rows.items()}
    return job, StageClaim(ClaimOutcome.CLAIMED, job, held.attempts, attempts)


def _insert_outputs(session: Session, job: Job, outputs: StageOutputs,
                    now: datetime) -> int | None:
    """Add the stage's rows; returns the bytes of the job's artifacts afterwards if the stage
    recorded any (None otherwise), each insert or replacement on its project's ledger."""
    job_id = job.id
    for position, row in enumerate(outputs.mrc_rows):
        session.add(MRCRow(
            job_id=job_id, position=position, module=row.get("name", row.get("module")),
            parameters=int(row["parameters"]), mrc=float(row["mrc"]),
            worst_robust_loss=float(row["worst_robust_loss"]),
            robust_accuracy_at_worst=_float(row.get("robust_accuracy_at_worst")),
            robust_accuracy_drop=_float(row.get("robust_accuracy_drop")),
            seconds=_float(row.get("seconds")),
            max_ascent_loss=_float(row.get("max_ascent_loss")),
            passes=None if row.get("passes") is None else int(row["passes"]),
            exact=None if row.get("exact") is None else bool(row["exact"]),
            zero_gradient=(None if row.get("zero_gradient") is None
                           else bool(row["zero_gradient"])),
        ))
    for row in outputs.epochs:
        session.add(EpochMetric(
            job_id=job_id, epoch=int(row["epoch"]), lr=_float(row.get("lr")),
            train_loss=_float(row.get("train_loss")),
            train_accuracy=_float(row.get("train_accuracy")),
            val_accuracy=_float(row.get("val_accuracy")), seconds=_float(row.get("seconds")),
        ))
    for position, row in enumerate(outputs.interpolation_points):
        session.add(InterpolationPoint(
            job_id=job_id, position=position, alpha=float(row["alpha"]),
            clean_accuracy=float(row["clean_accuracy"]),
            robust_accuracy=_float(row.get("robust_accuracy")),
            robust_accuracy_at_most=_float(row.get("robust_accuracy_at_most")),
        ))
    # An artifact re-recorded under the same name replaces the row, never duplicates; the rows
    # already there are read in one statement (session.merge would read them one by one).
    names = [artifact.name for artifact in outputs.artifacts]
    if not names:
        return None
    # All the job's rows (a handful), not only those named: their bytes are what its
    # reservation is lowered by, read in the same statement.
    existing = {row.name: row for row in session.execute(
        select(Artifact).where(Artifact.job_id == job_id)).scalars()}
    stored = sum(row.size for row in existing.values())
    for artifact in outputs.artifacts:
        values = {"storage_key": artifact.storage_key, "size": artifact.size,
                  "sha256": artifact.sha256, "content_type": artifact.content_type,
                  "created_at": now}
        recorded = existing.get(artifact.name)
        before = None if recorded is None else recorded.size
        if recorded is None:
            existing[artifact.name] = Artifact(job_id=job_id, name=artifact.name, **values)
            session.add(existing[artifact.name])
        else:
            for column, value in values.items():
                setattr(recorded, column, value)
        artifact_written(session, job.project_id, before, artifact.size)
        stored += artifact.size - (before or 0)
    return stored


def _mark_dispatched(session: Session, job_id: str, stage: str, now: datetime) -> None:
    """Record that the stage's message is sent now (:mod:`persistence.resend`)."""
    session.execute(update(JobStage)
                    .where(JobStage.job_id == job_id, JobStage.stage == stage)
                    .values(dispatched_at=now)
                    .execution_options(synchronize_session=False))


def _at(now: datetime) -> Any:
    """``now`` as a bound value of the stages' time columns (their UTC type, on SQLite too)."""
    return literal(now, JobStage.__table__.c.started_at.type)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def release_stage(session: Session, job_id: str, stage: str, *, owner: str, error: str,
                  now: datetime | None = None) -> int:
    """Give the stage back after an unexpected error so that it can be retried; returns the
    number of attempts used so far and logs a ``stage_retry`` event. :class:`LeaseLost` if
    ``owner`` does not hold the stage (another worker took it over: it decides, not this one)."""
    now = now or db_now(session)
    with transaction(session):
        load_job(session, job_id, for_update=True)  # lock order: jobs, then job_stages
        released = _rows_affected(session,
            update(JobStage)
            .where(JobStage.job_id == job_id, JobStage.stage == stage,
                   JobStage.lease_owner == owner, JobStage.status == StageStatus.RUNNING)
            .values(status=StageStatus.PENDING, lease_owner=None, lease_expires_at=None,
                    last_error=error[:4000], dispatched_at=now)  # the caller sends it again
            .execution_options(synchronize_session=False)
        )
        if released != 1:
            raise LeaseLost(f"worker {owner} does not hold stage '{stage}' of job {job_id}")
        row = _load_stage(session, job_id, stage)
        log_event(session, job_id, EventKind.STAGE_RETRY,
               {"stage": stage, "attempt": row.attempts, "error": error[:1000]}, now)
    return row.attempts


#: The job's progress message while a stage handed back by a stopping worker waits for another.
HANDED_BACK_MESSAGE = "handed back by a worker that is shutting down; waiting for another worker"


class HandBackReason(enum.StrEnum):
    """Why a worker gave a stage back uncounted (the ``reason`` of ``stage_handed_back``)."""

    #: A warm shutdown (SIGTERM).
    WORKER_SHUTDOWN = "worker_shutdown"
    #: The job's built-in dataset is not in this worker's ``DATA_ROOT``, and another live
    #: worker's is (``worker/tasks.py``).
    DATASET_MISSING = "dataset_missing"


#: The job's progress message while it waits, by reason.
HAND_BACK_MESSAGES = {
    HandBackReason.WORKER_SHUTDOWN: HANDED_BACK_MESSAGE,
    HandBackReason.DATASET_MISSING: "handed back by a worker whose DATA_ROOT lacks the job's "
    "dataset; waiting for a worker that holds it",
}


def hand_back_stage(session: Session, job_id: str, stage: str, *, owner: str,
                    events: Sequence[tuple[str, Mapping[str, Any], datetime]] = (),
                    now: datetime | None = None,
                    reason: HandBackReason = HandBackReason.WORKER_SHUTDOWN) -> bool:
    """Give the stage back because its worker is shutting down (a warm shutdown: SIGTERM), or
    (``reason``) cannot read the job's dataset where another worker can, for
    another worker to run it from its start; the caller sends its message again once this has
    committed. Unlike :func:`release_stage` the claim is not counted: the stage and the job get
    their attempt back (a rolling deploy must not use up ``MAX_STAGE_ATTEMPTS``), so the next
    claim has the same attempt number and the same object keys, which the stopped attempt never
    wrote (it stopped before its outputs). Logs a ``stage_handed_back`` event; the job stays
    ``running`` with a progress message saying it waits. Returns True when the job was
    cancelled instead: its cancellation was asked for after the stage last read the flag, and
    with no stage held any more it ends now (as a claim would end it), rather than showing
    ``running`` until some worker takes the message. :class:`LeaseLost` if ``owner`` does not
    hold the stage (another worker took it over, or the job ended).

    ``events``: the stopped attempt's reports not yet written, written first in the same
    transaction (its last ``module_scored`` rows, which the next attempt then does not compute
    again: :func:`stored_events`)."""
    now = now or db_now(session)
    with transaction(session):
        job = load_job(session, job_id, for_update=True, relations=False)
        if job.status != JobStatus.RUNNING:
            raise LeaseLost(f"job {job_id} is {job.status}; stage '{stage}' was not handed back")
        for kind, payload, when in events:
            log_event(session, job_id, kind, payload, when)
        handed = session.execute(
            update(JobStage)
            .where(JobStage.job_id == job_id, JobStage.stage == stage,
                   JobStage.lease_owner == owner, JobStage.status == StageStatus.RUNNING)
            .values(status=StageStatus.PENDING, lease_owner=None, lease_expires_at=None,
                    attempts=JobStage.attempts - 1, dispatched_at=now)
            .returning(JobStage.attempts)
            .execution_options(synchronize_session=False)
        ).scalars().all()
        if len(handed) != 1:
            raise LeaseLost(f"worker {owner} does not hold stage '{stage}' of job {job_id}")
        job.attempts = max(job.attempts - 1, 0)
        job.stage_progress = 0.0
        job.progress_message = HAND_BACK_MESSAGES[reason]
        touch(job, now)
        log_event(session, job_id, EventKind.STAGE_HANDED_BACK,
                  {"stage": stage, "attempt": handed[0] + 1, "worker": owner,
                   "reason": str(reason)}, now)
        if job.cancel_requested:
            stage_rows = load_stages(session, job_id)
            if not work_is_held(session, job_id, stage_rows, now):
                end_stopped_job(session, job, stage_rows, now)
                return True
        return False


def count_hand_backs(session: Session, job_id: str, stage: str,
                     reason: HandBackReason) -> int:
    """How many times the job's ``stage`` was handed back for ``reason`` (its
    ``stage_handed_back`` events). Reads only."""
    return int(session.execute(select(func.count()).select_from(JobEvent).where(
        JobEvent.job_id == job_id, JobEvent.kind == EventKind.STAGE_HANDED_BACK,
        JobEvent.payload["stage"].as_string() == stage,
        JobEvent.payload["reason"].as_string() == str(reason))).scalar_one())


def recorded_release(session: Session, job_id: str, stage: str, *, attempt: int,
                     error: str) -> int | None:
    """Whether a :func:`release_stage` of claim ``attempt`` committed although its caller saw an
    error (a database outage that took the commit's answer): the stage pending again at that
    attempt with that ``error`` (None if not: a takeover's claim counts a later attempt, a
    hand-back an earlier one); else what that call returned, the attempts used. Reads only."""
    row = _load_stage(session, job_id, stage)
    if (row.status != StageStatus.PENDING or row.attempts != attempt
            or row.last_error != error[:4000]):
        return None
    return row.attempts


def recorded_hand_back(session: Session, job_id: str, stage: str, *, owner: str,
                       attempt: int) -> bool | None:
    """Whether a :func:`hand_back_stage` of claim ``attempt`` by ``owner`` committed although its
    caller saw an error: None if the stage is still leased to ``owner`` or no
    ``stage_handed_back`` event of that claim exists; else what that call would have returned
    as near as a read can tell: whether the job has ended after a cancellation. Reads only."""
    row = _load_stage(session, job_id, stage)
    if row.status == StageStatus.RUNNING and row.lease_owner == owner:
        return None
    handed = session.execute(select(JobEvent.payload).where(
        JobEvent.job_id == job_id, JobEvent.kind == EventKind.STAGE_HANDED_BACK)).scalars()
    if not any(payload.get("stage") == stage and payload.get("worker") == owner
               and payload.get("attempt") == attempt for payload in handed):
        return None
    job = load_job(session, job_id, relations=False)
    return job.cancel_requested and job.status in TERMINAL_STATUSES


def recorded_failure(session: Session, job_id: str, stage: str, code: str, message: str, *,
                     attempt: int) -> Job | None:
    """Whether a :func:`fail_job` of the stage's claim ``attempt`` committed although its caller
    saw an error: the job failed with that ``code`` and ``message`` in that stage, at that
    attempt (None if not); else the job, as that call returned it. Reads only."""
    job = load_job(session, job_id, relations=False)
    row = _load_stage(session, job_id, stage)
    if (job.status != JobStatus.FAILED or job.error_code != code
            or job.error_message != storable_text(message) or row.status != StageStatus.FAILED
            or row.attempts != attempt):
        return None
    return job


def fail_job(session: Session, job_id: str, code: str, message: str, *,
             stage: str | None = None, owner: str | None = None, force: bool = False,
             now: datetime | None = None, field: str | None = None) -> Job:
    """End the job as failed with an error ``code`` and a ``message`` for the user; the stage
    (default: the job's current one) is marked failed. No-op if the job already ended. With
    ``owner`` (a worker), only while that worker holds the stage, else :class:`LeaseLost`.
    Without ``owner``, while a part of a split stage still runs the failure only becomes
    pending and the job ends with its last part (:func:`persistence.transactions.
    fail_when_parts_stop`; ``force``: now, whatever runs). With ``owner``, a job that already
    ended raises :class:`JobEnded` instead: the worker's end was not the job's. ``field``: the
    config setting a library error blames, kept with the error and in the failure's events."""
    now = now or db_now(session)
    with transaction(session):
        job = load_job(session, job_id, for_update=True)
        if job.status in TERMINAL_STATUSES and owner is not None:
            raise JobEnded(f"job {job_id} had already ended ({job.status}); worker {owner} "
                           "recorded nothing")
        if job.status not in TERMINAL_STATUSES:
            stage = stage or job.stage
            row = _load_stage(session, job_id, stage) if stage else None
            if owner is not None:
                if row is None or row.lease_owner != owner:
                    raise LeaseLost(f"worker {owner} does not hold stage '{stage}' of job "
                                    f"{job_id}")
                fail_now(session, job, row, code, message, now, field=field)
            else:
                fail_when_parts_stop(session, job, row, code, message, now, force=force,
                                     field=field)
    return job


def mark_cancelled(session: Session, job_id: str, *, now: datetime | None = None) -> Job:
    """End the job as cancelled (the worker's answer to ``JobCancelled``). A job that already
    ended (the stage's reports read it as ended, as they read a cancellation) raises
    :class:`JobEnded`, nothing written: that end was another's (the recovery loop's, past the
    time limit), which the worker must not log and count as its cancellation."""
    now = now or db_now(session)
    with transaction(session):
        job = load_job(session, job_id, for_update=True)
        if job.status in TERMINAL_STATUSES:
            raise JobEnded(f"job {job_id} had already ended ({job.status}); not cancelled now")
        end_stopped_job(session, job, load_stages(session, job_id), now)
    return job


# --------------------------------------------------------------------------------------------
# Recovery
# --------------------------------------------------------------------------------------------
def stages_to_redispatch(session: Session, *, stale_after: float, pending_after: float,
                         now: datetime | None = None) -> list[tuple[str, str]]:
    """(job id, stage) pairs whose message must be sent again; marks them as re-sent.

    Two cases. A running stage whose lease expired (its worker died), once the job has been quiet
    for ``stale_after`` seconds; re-sent jobs get ``updated_at = now``, so each is re-sent at most
    once per period. The job's current stage (a queued job's first, a running job's next) still
    waiting ``pending_after`` seconds after its message was sent (``dispatched_at``,
    :mod:`persistence.resend`): its message may have been lost (a broker restarted without
    persistence, a crash between recording a stage and sending the next message) or may simply
    wait in a long queue, so keep this long (an hour); its ``dispatched_at`` moves to now. Sending
    twice is harmless: claims decide who runs a stage.
    """
    now = now or db_now(session)
    expired = and_(JobStage.status == StageStatus.RUNNING, JobStage.lease_expires_at < now,
                   Job.updated_at < now - timedelta(seconds=stale_after))
    # A queued job has no current stage yet: its first stage is the one waiting.
    current = and_(JobStage.job_id == Job.id,
                   JobStage.stage == func.coalesce(Job.stage, STAGE_ORDER[0].value))
    with transaction(session):
        rows = session.execute(
            select(Job.id, JobStage.stage, Job.updated_at).join(JobStage, current)
            .where(Job.status.in_(ACTIVE_STATUSES), expired).order_by(Job.created_at)
        ).all()
        found = []
        for job_id, stage, seen in rows:
            # Only if the job is as it was read: every worker runs this loop, and one that
            # marked (or a worker that claimed) the job meanwhile has dealt with it; this pass
            # would log a second stage_recovered and send a second message.
            if _rows_affected(session, update(Job)
                              .where(Job.id == job_id, Job.updated_at == seen)
                              .values(updated_at=now)
                              .execution_options(synchronize_session=False)):
                found.append((job_id, stage))
        waiting = session.execute(
            select(Job.id, JobStage.stage).join(JobStage, current)
            .where(Job.status.in_(ACTIVE_STATUSES),
                   resend.overdue(JobStage, waiting=StageStatus.PENDING, after=pending_after,
                                  now=now))
            .order_by(Job.created_at)).all()
        # Each re-checked as it is marked: claimed, or re-sent by another pass, meanwhile.
        found.extend((job_id, stage) for job_id, stage in waiting if resend.take_overdue(
            session, JobStage, [JobStage.job_id == job_id, JobStage.stage == stage],
            waiting=StageStatus.PENDING, after=pending_after, now=now))
        for job_id, stage in found:
            log_event(session, job_id, EventKind.STAGE_RECOVERED, {"stage": stage}, now)
    return found


def stored_events(session: Session, job_id: str, kind: str, inputs: str) -> list[dict[str, Any]]:
    """The payloads of the job's ``kind`` events computed from inputs of digest ``inputs``, first
    reported first: what an earlier attempt of a stage stored as it went, which a new attempt
    need not compute again (``rift.pipeline.PipelineCallbacks.stored_events``): MRC rows
    (``module_scored``, digest ``rift.mrc.mrc_inputs_digest``) and α points
    (``alpha_evaluated``). Events are the store because they are written as each module or
    point ends (at most ``PROGRESS_INTERVAL_SECONDS`` later, and at a hand-back), while the
    ``mrc_rows`` and ``interpolation_points`` tables hold only a finished stage's outputs."""
    query = (select(JobEvent.payload)
             .where(JobEvent.job_id == job_id, JobEvent.kind == kind)
             .order_by(JobEvent.id))
    return [dict(payload) for payload in session.execute(query).scalars()
            if isinstance(payload, Mapping) and payload.get("inputs") == inputs]
