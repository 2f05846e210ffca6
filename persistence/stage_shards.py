"""A stage split into parts that any free worker runs, each part under its own lease: an extension
of the stage-lease protocol in :mod:`persistence.stages`. Two kinds of part use it
(:class:`PartKind`): the shards of the MRC stage (``mrc.shards`` > 1, ``worker/shards.py``) and
the candidates of a sweep in the fine-tune stage (``finetune.candidates`` > 1 or ``lr_grid``,
``worker/candidates.py``).

Flow: the worker holding the stage's lease prepares the parts and calls :func:`start_shards` or
:func:`start_candidates`, which writes one row per part and hands the stage to the marker owner
:data:`SHARDED_OWNER` with no expiry (the parts' own leases now say whether work is alive). Each
part's task claims its row with :func:`claim_part` (one conditional UPDATE, as
:func:`persistence.stages.claim_stage`), renews it with :func:`renew_part_lease`, and records its
result with :func:`finish_part`, which also moves the job's progress to "parts done / parts".
The task that finds every part done (:func:`completed_results`) merges the results and finishes
the stage through :func:`persistence.stages.finish_stage` with ``owner=SHARDED_OWNER``: a
conditional UPDATE, so only one merge is recorded even if two tasks try. A part whose worker died
is found by :func:`parts_to_redispatch` when its lease expires and is re-run alone; the others
stay done. A part whose message was lost before any worker took it is sent again once it has
waited ``QUEUED_RESEND_AFTER_SECONDS`` since its message was last sent (``dispatched_at``,
:mod:`persistence.resend`), whatever its siblings do. Locks are taken in the order jobs →
job_stages → the parts' table.

The MRC-shard functions (``claim_shard``, ``finish_shard``...) are the generic ones with
:data:`MRC_SHARDS` filled in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Select, and_, delete, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from persistence import leases, resend
from persistence.db_clock import db_now
from persistence.models import (
    TERMINAL_STATUSES,
    Job,
    JobEvent,
    JobStage,
    JobStatus,
    MRCShard,
    StageName,
    StageStatus,
    SweepCandidate,
)
from persistence.stages import ClaimOutcome, LeaseLost
from persistence.transactions import (
    SHARDED_OWNER,
    EventKind,
    end_stopped_job,
    fail_when_parts_stop,
    load_job,
    load_stages,
    log_event,
    touch,
    transaction,
    work_is_held,
)

SHARD_EVENT = "shard_finished"
CANDIDATE_EVENT = "candidate_finished"

Part = MRCShard | SweepCandidate


@dataclass(frozen=True)
class PartKind:
    """One way of splitting a stage: the table of its parts, the column numbering them, the stage
    they belong to, and the words used in events and messages."""

    model: type[MRCShard] | type[SweepCandidate]
    index: InstrumentedAttribute[int]
    stage: StageName
    event: str  # events: '<event>_started', '<event>_finished'; payload key of the index
    noun: str  # in messages: "MRC shard 2 ...", "candidate 2 ..."
    plural: str  # in the job's progress message: "3 of 4 candidates done"


MRC_SHARDS = PartKind(MRCShard, MRCShard.shard, StageName.MRC, "shard", "MRC shard", "shards")
CANDIDATES = PartKind(SweepCandidate, SweepCandidate.candidate, StageName.FINETUNE, "candidate",
                      "candidate", "candidates")


@dataclass(frozen=True)
class PartClaim:
    outcome: ClaimOutcome
    job: Job
    part: Part
    attempt: int = 0  # the attempt number (1-based) when CLAIMED


@dataclass(frozen=True)
class ShardClaim:
    outcome: ClaimOutcome
    job: Job
    modules: list[str]
    inputs_key: str
    attempt: int = 0


_rows_affected = leases.rows_affected


def _of(kind: PartKind, job_id: str, index: int | None = None) -> list[Any]:
    """WHERE clauses selecting the job's parts of ``kind`` (one part when ``index`` is given)."""
    clauses: list[Any] = [kind.model.job_id == job_id]
    if index is not None:
        clauses.append(kind.index == index)
    return clauses


def _select_parts(kind: PartKind, job_id: str, index: int | None = None) -> Select[Part]:
    """The job's parts of ``kind`` (or one), re-read from the database (never the session's
    cached rows: other workers change them)."""
    query = select(kind.model).where(*_of(kind, job_id, index))
    return cast("Select[Part]", query.execution_options(populate_existing=True))


def _load_part(session: Session, kind: PartKind, job_id: str, index: int) -> Part:
    return session.execute(_select_parts(kind, job_id, index)).scalar_one()


def _hand_over(session: Session, kind: PartKind, job_id: str, owner: str, parts: Sequence[Part],
               event: str, payload: dict[str, Any], now: datetime,
               metrics: Mapping[str, Any] | None = None) -> None:
    """Hand ``kind.stage`` from ``owner`` to its ``parts`` (earlier parts replaced), if ``owner``
    holds the stage's lease and the job runs; else :class:`LeaseLost`. ``metrics`` are merged
    into the job's (what the owner measured before handing over, for the merge to record)."""
    with transaction(session):
        job = load_job(session, job_id, for_update=True)
        handed = _rows_affected(session,
            update(JobStage)
            .where(JobStage.job_id == job_id, JobStage.stage == kind.stage,
                   JobStage.lease_owner == owner, JobStage.status == StageStatus.RUNNING)
            .values(lease_owner=SHARDED_OWNER, lease_expires_at=None)
            .execution_options(synchronize_session=False))
        if handed != 1 or job.status != JobStatus.RUNNING:
            raise LeaseLost(f"worker {owner} does not hold the {kind.stage} stage of job {job_id}")
        session.execute(delete(kind.model).where(*_of(kind, job_id)))
        session.add_all(parts)
        job.stage_progress = 0.0
        job.progress_message = f"0 of {len(parts)} {kind.plural} done"
        if metrics:
            job.metrics = {**(job.metrics or {}), **metrics}
        touch(job, now)
        log_event(session, job_id, event, payload, now)


def start_shards(session: Session, job_id: str, *, owner: str, groups: Sequence[Sequence[str]],
                 inputs_key: str, metrics: Mapping[str, Any] | None = None,
                 now: datetime | None = None) -> None:
    """Record one pending shard per module group and hand the MRC stage over to them, if ``owner``
    holds the stage's lease (else :class:`LeaseLost`). Shards of an earlier attempt are replaced.
    ``metrics`` go into the job's metrics (the preflight report, which the merge records)."""
    now = now or db_now(session)
    shards = [MRCShard(job_id=job_id, shard=index, modules=list(modules), inputs_key=inputs_key,
                       status=StageStatus.PENDING, attempts=0, created_at=now,
                       dispatched_at=now)
              for index, modules in enumerate(groups)]
    _hand_over(session, MRC_SHARDS, job_id, owner, shards, "mrc_sharded",
               {"shards": len(groups), "modules": sum(len(g) for g in groups)}, now, metrics)


def start_candidates(session: Session, job_id: str, *, owner: str,
                     candidates: Sequence[tuple[str, float]], now: datetime | None = None) -> None:
    """Record one pending row per (module, lr) candidate, in the sweep's order, and hand the
    fine-tune stage over to them, if ``owner`` holds its lease (else :class:`LeaseLost`)."""
    now = now or db_now(session)
    rows = [SweepCandidate(job_id=job_id, candidate=index, module=module, lr=float(lr),
                           status=StageStatus.PENDING, attempts=0, created_at=now,
                           dispatched_at=now)
            for index, (module, lr) in enumerate(candidates)]
    _hand_over(session, CANDIDATES, job_id, owner, rows, "sweep_started",
               {"candidates": [{"module": m, "lr": lr} for m, lr in candidates]}, now)


def claim_part(session: Session, kind: PartKind, job_id: str, index: int, *, owner: str,
               lease_seconds: float, max_attempts: int, now: datetime | None = None) -> PartClaim:
    """Take part ``index`` for ``owner``: granted if it is pending or its lease expired, and it
    was claimed fewer than ``max_attempts`` times. DONE: the part finished before (the caller
    may try the merge). EXHAUSTED fails the job with ``stage_failed_repeatedly`` (pending while
    a sibling part runs). A job asked to stop (a cancellation, a pending failure) whose parts
    hold no live lease is ended now: cancelled, or failed with its pending failure (INACTIVE)."""
    now = now or db_now(session)
    with transaction(session):
        job = load_job(session, job_id, for_update=True)
        row = _load_part(session, kind, job_id, index)
        if job.status in TERMINAL_STATUSES:
            return PartClaim(ClaimOutcome.INACTIVE, job, row)
        if job.cancel_requested:
            # Nobody runs the job any more once no part holds a live lease: end it now.
            stages = load_stages(session, job_id)
            if not work_is_held(session, job_id, stages, now):
                end_stopped_job(session, job, stages, now)
            return PartClaim(ClaimOutcome.INACTIVE, job, row)
        if row.status == StageStatus.DONE:
            return PartClaim(ClaimOutcome.DONE, job, row)
        model = kind.model
        claimed = _rows_affected(session,
            update(model)
            .where(*_of(kind, job_id, index),
                   leases.claimable(model, waiting=StageStatus.PENDING,
                                    max_attempts=max_attempts, now=now))
            .values(**leases.claimed_values(model, owner=owner, lease_seconds=lease_seconds,
                                            now=now))
            .execution_options(synchronize_session=False))
        row = _load_part(session, kind, job_id, index)
        if claimed == 1:
            log_event(session, job_id, f"{kind.event}_started",
                      {"stage": kind.stage.value, kind.event: index, "attempt": row.attempts,
                       "worker": owner}, now)
            return PartClaim(ClaimOutcome.CLAIMED, job, row, row.attempts)
        if leases.is_live(row, now):
            return PartClaim(ClaimOutcome.HELD, job, row)
        if row.attempts >= max_attempts:
            stage = session.execute(select(JobStage).where(
                JobStage.job_id == job_id, JobStage.stage == kind.stage)).scalar_one()
            # Its siblings may still run: they stop first (fail_when_parts_stop).
            fail_when_parts_stop(
                session, job, stage, "stage_failed_repeatedly",
                f"{kind.noun} {index} was started {row.attempts} times (MAX_STAGE_ATTEMPTS="
                f"{max_attempts}) without finishing. Last error: "
                f"{row.last_error or 'the worker process died'}", now)
            return PartClaim(ClaimOutcome.EXHAUSTED, job, row)
        return PartClaim(ClaimOutcome.INACTIVE, job, row)


def claim_shard(session: Session, job_id: str, shard: int, *, owner: str, lease_seconds: float,
                max_attempts: int, now: datetime | None = None) -> ShardClaim:
    """:func:`claim_part` of an MRC shard, with the shard's modules and inputs."""
    claim = claim_part(session, MRC_SHARDS, job_id, shard, owner=owner,
                       lease_seconds=lease_seconds, max_attempts=max_attempts, now=now)
    assert isinstance(claim.part, MRCShard)
    return ShardClaim(claim.outcome, claim.job, claim.part.modules, claim.part.inputs_key,
                      claim.attempt)


def renew_part_lease(session: Session, kind: PartKind, job_id: str, index: int, *, owner: str,
                     lease_seconds: float, now: datetime | None = None) -> bool:
    """Extend ``owner``'s lease on the part; False if ``owner`` no longer holds it."""
    now = now or db_now(session)
    with transaction(session):
        return leases.renew(session, kind.model, _of(kind, job_id, index), owner=owner,
                            lease_seconds=lease_seconds, now=now)


def renew_shard_lease(session: Session, job_id: str, shard: int, *, owner: str,
                      lease_seconds: float, now: datetime | None = None) -> bool:
    return renew_part_lease(session, MRC_SHARDS, job_id, shard, owner=owner,
                            lease_seconds=lease_seconds, now=now)


def finish_part(session: Session, kind: PartKind, job_id: str, index: int, *, owner: str,
                result: dict[str, Any], summary: dict[str, Any] | None = None,
                now: datetime | None = None) -> bool:
    """Record the part's result and mark it done, only while ``owner`` holds its lease and the
    job runs (else :class:`LeaseLost`, nothing written); the job's progress becomes the share of
    parts done. ``summary`` goes into the ``<event>_finished`` event. Returns whether the job
    ended now: its cancellation was asked and no other part holds work."""
    now = now or db_now(session)
    model = kind.model
    with transaction(session):
        job = load_job(session, job_id, for_update=True)
        if job.status != JobStatus.RUNNING:
            raise LeaseLost(f"job {job_id} is {job.status}; {kind.noun} {index} was not recorded")
        done = _rows_affected(session,
            update(model)
            .where(*_of(kind, job_id, index), model.lease_owner == owner,
                   model.status == StageStatus.RUNNING)
            .values(status=StageStatus.DONE, lease_owner=None, lease_expires_at=None,
                    result=result, finished_at=now)
            .execution_options(synchronize_session=False))
        if done != 1:
            raise LeaseLost(f"worker {owner} no longer holds {kind.noun} {index} of job {job_id}")
        statuses = list(session.execute(select(model.status).where(*_of(kind, job_id)))
                        .scalars())
        finished = sum(status == StageStatus.DONE for status in statuses)
        if job.stage == kind.stage:
            job.stage_progress = finished / len(statuses)
            job.progress_message = f"{finished} of {len(statuses)} {kind.plural} done"
            touch(job, now)
        log_event(session, job_id, f"{kind.event}_finished",
                  {"stage": kind.stage.value, kind.event: index, "done": finished,
                   "total": len(statuses), **(summary or {})}, now)
        # Finished past its last cancellation poll: recorded, and the last part to stop ends
        # the job, as in stop_cancelled_part. Before, with a sibling already stopped for the
        # cancellation (never done: no merge or pick runs) nothing ended the job, which stayed
        # running with no work held, forever.
        return job.cancel_requested and _end_if_last_to_stop(session, job, now)


def recorded_part_finish(session: Session, kind: PartKind, job_id: str, index: int, *,
                         attempt: int) -> bool | None:
    """Whether a :func:`finish_part` of the part's claim ``attempt`` committed although its
    caller saw an error (a database outage that took the commit's answer): None if the part is
    not done at that attempt (refused, or never reached the database; a takeover's claim counts
    a later attempt). Else what that call would have returned as near as a read can tell:
    whether the job has ended after a cancellation (the part's finish, or a later sibling's,
    ended it; either way nothing runs the job any more). Reads only."""
    row = _load_part(session, kind, job_id, index)
    if row.status != StageStatus.DONE or row.attempts != attempt:
        return None
    job = load_job(session, job_id, relations=False)
    return job.cancel_requested and job.status in TERMINAL_STATUSES


def finish_shard(session: Session, job_id: str, shard: int, *, owner: str,
                 result: dict[str, Any], now: datetime | None = None) -> bool:
    """:func:`finish_part` of an MRC shard: ``result`` is its part of the MRC table."""
    return finish_part(session, MRC_SHARDS, job_id, shard, owner=owner, result=result,
                summary={"seconds": result.get("seconds")}, now=now)


def release_part(session: Session, kind: PartKind, job_id: str, index: int, *, owner: str,
                 error: str, now: datetime | None = None) -> None:
    """Give the part back after an unexpected error so that it can be retried; the caller sends
    its message again once this has committed."""
    model = kind.model
    now = now or db_now(session)
    with transaction(session):
        load_job(session, job_id, for_update=True)
        released = _rows_affected(session,
            update(model)
            .where(*_of(kind, job_id, index), model.lease_owner == owner,
                   model.status == StageStatus.RUNNING)
            .values(status=StageStatus.PENDING, lease_owner=None, lease_expires_at=None,
                    last_error=error[:4000], dispatched_at=now)
            .execution_options(synchronize_session=False))
        if released != 1:
            raise LeaseLost(f"worker {owner} does not hold {kind.noun} {index} of job {job_id}")


def hand_back_part(session: Session, kind: PartKind, job_id: str, index: int, *, owner: str,
                   now: datetime | None = None) -> bool:
    """Give the part back because its worker is shutting down (see
    :func:`persistence.stages.hand_back_stage`): pending again with its attempt given back, a
    ``stage_handed_back`` event naming the part; the caller sends its message again once this
    has committed. :class:`LeaseLost` if ``owner`` does not hold the part or the job ended.
    Returns True when the job was cancelled instead (its cancellation was asked while the part
    ran and no other work of it is held), as ``hand_back_stage`` does: the caller sends
    nothing."""
    model = kind.model
    now = now or db_now(session)
    with transaction(session):
        job = load_job(session, job_id, for_update=True, relations=False)
        if job.status != JobStatus.RUNNING:
            raise LeaseLost(f"job {job_id} is {job.status}; {kind.noun} {index} was not handed "
                            "back")
        handed = session.execute(
            update(model)
            .where(*_of(kind, job_id, index), model.lease_owner == owner,
                   model.status == StageStatus.RUNNING)
            .values(status=StageStatus.PENDING, lease_owner=None, lease_expires_at=None,
                    attempts=model.attempts - 1, dispatched_at=now)
            .returning(model.attempts)
            .execution_options(synchronize_session=False)).scalars().all()
        if len(handed) != 1:
            raise LeaseLost(f"worker {owner} does not hold {kind.noun} {index} of job {job_id}")
        touch(job, now)
        log_event(session, job_id, EventKind.STAGE_HANDED_BACK,
                  {"stage": kind.stage.value, kind.event: index, "attempt": handed[0] + 1,
                   "worker": owner, "reason": "worker_shutdown"}, now)
        # Asked while the part ran (held work, so not ended then), and the worker shut down
        # before its next cancellation poll: before, the job stayed running with nothing
        # running it until a worker took the message again (none, while the whole pool was
        # down).
        return job.cancel_requested and _end_if_last_to_stop(session, job, now)


def recorded_part_release(session: Session, kind: PartKind, job_id: str, index: int, *,
                          attempt: int, error: str) -> bool | None:
    """Whether a :func:`release_part` of the part's claim ``attempt`` committed although its
    caller saw an error (a database outage that took the commit's answer): the part pending
    again at that attempt with that ``error`` (None if not: a takeover's claim counts a later
    attempt, a hand-back an earlier one); else True. Reads only."""
    row = _load_part(session, kind, job_id, index)
    if (row.status != StageStatus.PENDING or row.attempts != attempt
            or row.last_error != error[:4000]):
        return None
    return True


def recorded_part_hand_back(session: Session, kind: PartKind, job_id: str, index: int, *,
                            owner: str, attempt: int) -> bool | None:
    """Whether a :func:`hand_back_part` of claim ``attempt`` by ``owner`` committed although
    its caller saw an error: None if the part is still leased to ``owner`` or no
    ``stage_handed_back`` event of that claim of the part exists; else what that call would have
    returned as near as a read can tell: whether the job has ended after a cancellation. Reads
    only."""
    row = _load_part(session, kind, job_id, index)
    if row.status == StageStatus.RUNNING and row.lease_owner == owner:
        return None
    handed = session.execute(select(JobEvent.payload).where(
        JobEvent.job_id == job_id, JobEvent.kind == EventKind.STAGE_HANDED_BACK)).scalars()
    if not any(payload.get("stage") == kind.stage.value and payload.get(kind.event) == index
               and payload.get("worker") == owner and payload.get("attempt") == attempt
               for payload in handed):
        return None
    job = load_job(session, job_id, relations=False)
    return job.cancel_requested and job.status in TERMINAL_STATUSES


def recorded_part_failure(session: Session, kind: PartKind, job_id: str, index: int, *,
                          attempt: int, message: str) -> bool | None:
    """Whether a :func:`fail_part` of the part's claim ``attempt`` committed although its caller
    saw an error: the part failed at that attempt with that ``message`` (None if not); else
    whether the job has ended (its failure pending while a sibling runs). Reads only."""
    row = _load_part(session, kind, job_id, index)
    if (row.status != StageStatus.FAILED or row.attempts != attempt
            or row.last_error != message[:4000]):
        return None
    return load_job(session, job_id, relations=False).status in TERMINAL_STATUSES


def _end_if_last_to_stop(session: Session, job: Job, now: datetime) -> bool:
    """End the locked, active ``job`` asked to stop (a cancellation or a pending failure) once
    no work of it is held any more: cancelled, or failed with the pending failure
    (:func:`persistence.transactions.end_stopped_job`). Returns whether it ended."""
    stage_rows = load_stages(session, job.id)
    if work_is_held(session, job.id, stage_rows, now):
        return False
    end_stopped_job(session, job, stage_rows, now)
    return True


def stop_cancelled_part(session: Session, kind: PartKind, job_id: str, index: int, *,
                        owner: str, now: datetime | None = None) -> bool:
    """The part ``owner`` ran stopped because its job's cancellation was asked: it is marked
    cancelled (its lease given up), and the job is cancelled once no other work of it is held
    (:func:`persistence.transactions.work_is_held`): the last part to stop ends the job, as a
    stage's worker does. Returns whether the job ended now."""
    model = kind.model
    now = now or db_now(session)
    with transaction(session):
        job = load_job(session, job_id, for_update=True)
        session.execute(
            update(model)
            .where(*_of(kind, job_id, index), model.lease_owner == owner,
                   model.status == StageStatus.RUNNING)
            .values(status=StageStatus.CANCELLED, lease_owner=None, lease_expires_at=None)
            .execution_options(synchronize_session=False))
        if job.status in TERMINAL_STATUSES:
            return False
        return _end_if_last_to_stop(session, job, now)


def fail_part(session: Session, kind: PartKind, job_id: str, index: int, *, owner: str,
              code: str, message: str, now: datetime | None = None,
              field: str | None = None) -> bool:
    """Part ``index`` failed the job (a library error, missing inputs, its attempts used up): it
    is marked failed (the lease ``owner`` held given up, the error kept), and the job fails with
    ``code`` and ``message`` once no sibling part runs; until then the failure is pending and
    the siblings are asked to stop (:func:`persistence.transactions.fail_when_parts_stop`). A
    job that ended meanwhile is left. Returns whether the job ended now."""
    model = kind.model
    now = now or db_now(session)
    with transaction(session):
        job = load_job(session, job_id, for_update=True)
        session.execute(
            update(model)
            .where(*_of(kind, job_id, index), model.lease_owner == owner,
                   model.status == StageStatus.RUNNING)
            .values(status=StageStatus.FAILED, lease_owner=None, lease_expires_at=None,
                    last_error=message[:4000], finished_at=now)
            .execution_options(synchronize_session=False))
        if job.status in TERMINAL_STATUSES:
            return False
        stage = session.execute(select(JobStage).where(
            JobStage.job_id == job_id, JobStage.stage == kind.stage)).scalar_one()
        return fail_when_parts_stop(session, job, stage, code, message, now, field=field)


def release_shard(session: Session, job_id: str, shard: int, *, owner: str, error: str) -> None:
    release_part(session, MRC_SHARDS, job_id, shard, owner=owner, error=error)


def completed_results(session: Session, kind: PartKind, job_id: str
                      ) -> list[dict[str, Any]] | None:
    """Every part's recorded result in index order, once all are done and the stage still waits
    for them; None otherwise (a part still runs, or the merge was recorded already)."""
    with transaction(session):
        stage = session.execute(select(JobStage).where(
            JobStage.job_id == job_id, JobStage.stage == kind.stage)
            .execution_options(populate_existing=True)).scalar_one()
        if stage.status != StageStatus.RUNNING or stage.lease_owner != SHARDED_OWNER:
            return None
        rows = list_parts(session, kind, job_id)
        if not rows or any(row.status != StageStatus.DONE or row.result is None for row in rows):
            return None
        return [dict(row.result) for row in rows if row.result is not None]


def completed_parts(session: Session, job_id: str) -> list[dict[str, Any]] | None:
    """:func:`completed_results` of the MRC shards: their parts of the table."""
    return completed_results(session, MRC_SHARDS, job_id)


def list_parts(session: Session, kind: PartKind, job_id: str) -> list[Part]:
    """The job's parts of ``kind`` in index order."""
    with transaction(session):
        return list(session.execute(_select_parts(kind, job_id).order_by(kind.index)).scalars())


def list_shards(session: Session, job_id: str) -> list[MRCShard]:
    """The job's shard rows in shard order."""
    return [row for row in list_parts(session, MRC_SHARDS, job_id) if isinstance(row, MRCShard)]


def list_candidates(session: Session, job_id: str) -> list[SweepCandidate]:
    """The job's sweep candidates in the sweep's order."""
    return [row for row in list_parts(session, CANDIDATES, job_id)
            if isinstance(row, SweepCandidate)]


#: What a losing candidate's recorded θ_FT says once its file is deleted (``reason``).
DISCARDED_REASON = ("deleted once the sweep picked candidate {winner}: only the chosen "
                    "candidate's θ_FT is kept (the job's artifact finetuned.safetensors)")


def forget_discarded_weights(session: Session, job_id: str, *, winner: int) -> int:
    """After the pick: every other candidate's recorded θ_FT stops naming its object key
    (deleted right after, :func:`worker.candidates.discard_other_candidates`); it keeps its
    size and SHA-256 (what was measured) with ``deleted: true`` and a ``reason``. The figures
    (outcome, curve, epochs) stay. Returns the rows changed; rows already changed are left."""
    changed = 0
    with transaction(session):
        for row in list_candidates(session, job_id):
            weights = (row.result or {}).get("finetuned")
            if row.candidate == winner or not isinstance(weights, dict) or weights.get("deleted"):
                continue
            assert row.result is not None
            # A new dict, so the JSON column is seen as changed.
            row.result = {**row.result, "finetuned": {
                "key": None, "deleted": True, "reason": DISCARDED_REASON.format(winner=winner),
                "size": weights.get("size"), "sha256": weights.get("sha256"),
                "content_type": weights.get("content_type")}}
            changed += 1
    return changed


def parts_to_redispatch(session: Session, kind: PartKind, *, stale_after: float,
                        pending_after: float, now: datetime | None = None
                        ) -> list[tuple[str, int]]:
    """(job id, index) pairs whose message must be sent again, marked as sent now.

    A pending part still waiting ``pending_after`` seconds after its message was last sent (lost
    before any worker took it, or waiting in a long queue): sent again once per period, while
    its siblings run or not (:mod:`persistence.resend`). Once the job has been quiet for
    ``stale_after`` seconds: a running part whose lease expired (its worker died), and part 0 of
    a job whose parts are all done but whose merge was never recorded (the worker died in
    between: a part task that finds its part done tries the merge); those jobs get
    ``updated_at = now``."""
    now = now or db_now(session)
    model = kind.model
    with transaction(session):
        waiting_stage = and_(JobStage.job_id == Job.id, JobStage.stage == kind.stage,
                             JobStage.status == StageStatus.RUNNING,
                             JobStage.lease_owner == SHARDED_OWNER)
        found = _expired_or_unmerged(session, kind, waiting_stage, stale_after, now)
        pending = session.execute(
            select(model.job_id, kind.index)
            .join(Job, Job.id == model.job_id).join(JobStage, waiting_stage)
            .where(Job.status == JobStatus.RUNNING,
                   resend.overdue(model, waiting=StageStatus.PENDING, after=pending_after,
                                  now=now))
            .order_by(model.job_id, kind.index)).all()
        # Each part marked on its own, re-checked: a worker that claimed it, or another
        # worker's pass that re-sent it, meanwhile has dealt with it.
        found.extend((job_id, index) for job_id, index in pending if resend.take_overdue(
            session, model, _of(kind, job_id, index), waiting=StageStatus.PENDING,
            after=pending_after, now=now))
        for job_id, index in found:
            log_event(session, job_id, f"{kind.event}_recovered",
                      {"stage": kind.stage.value, kind.event: index}, now)
    return found


def _expired_or_unmerged(session: Session, kind: PartKind, waiting_stage: Any,
                         stale_after: float, now: datetime) -> list[tuple[str, int]]:
    """:func:`parts_to_redispatch`'s parts of quiet jobs: those whose lease expired, and part 0
    of jobs whose parts are all done but not merged; the jobs are marked (``updated_at``)."""
    model = kind.model
    quiet = and_(Job.status == JobStatus.RUNNING,
                 Job.updated_at < now - timedelta(seconds=stale_after))
    rows = session.execute(
        select(model.job_id, kind.index, model.status)
        .join(Job, Job.id == model.job_id).join(JobStage, waiting_stage)
        .where(quiet).order_by(model.job_id, kind.index)).all()
    found: list[tuple[str, int]] = []
    by_job: dict[str, list[tuple[int, str]]] = {}
    for job_id, index, status in rows:
        by_job.setdefault(job_id, []).append((index, status))
    for job_id, parts in by_job.items():
        if all(status == StageStatus.DONE for _, status in parts):
            found.append((job_id, parts[0][0]))
    expired = session.execute(
        select(model.job_id, kind.index)
        .join(Job, Job.id == model.job_id).join(JobStage, waiting_stage)
        .where(quiet, model.status == StageStatus.RUNNING, model.lease_expires_at < now)).all()
    found.extend((job_id, index) for job_id, index in expired)
    # Only jobs still quiet: every worker runs this loop, and one that marked a job meanwhile
    # (this UPDATE waited for it) has sent its parts; this pass would log and send them a
    # second time.
    marked = {job_id for job_id in dict.fromkeys(job_id for job_id, _ in found)
              if _rows_affected(session, update(Job).where(Job.id == job_id, quiet)
                                .values(updated_at=now)
                                .execution_options(synchronize_session=False))}
    return [(job_id, index) for job_id, index in found if job_id in marked]


def shards_to_redispatch(session: Session, *, stale_after: float, pending_after: float,
                         now: datetime | None = None) -> list[tuple[str, int]]:
    """:func:`parts_to_redispatch` of the MRC shards."""
    return parts_to_redispatch(session, MRC_SHARDS, stale_after=stale_after,
                               pending_after=pending_after, now=now)
