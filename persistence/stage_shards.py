"""The MRC stage split into shards that any free worker runs, each under its own lease: an
extension of the stage-lease protocol in :mod:`persistence.stages`.

Flow (``worker/shards.py``): the worker holding the MRC stage's lease makes the adversarial set,
stores it, and calls :func:`start_shards`, which writes one ``mrc_shards`` row per group of
modules and hands the stage to the marker owner :data:`SHARDED_OWNER` with no expiry (the shards'
own leases now say whether work is alive). Each shard task claims its row with
:func:`claim_shard` (one conditional UPDATE, as :func:`persistence.stages.claim_stage`), renews it
with :func:`renew_shard_lease`, and records its part of the table with :func:`finish_shard`.
The task that finds every shard done merges the parts and finishes the stage through
:func:`persistence.stages.finish_stage` with ``owner=SHARDED_OWNER``: a conditional UPDATE, so
only one merge is recorded even if two tasks try. A shard whose worker died is found by
:func:`shards_to_redispatch` when its lease expires and is re-run alone; the others stay done.
Locks are taken in the order jobs → job_stages → mrc_shards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, Executable, and_, delete, or_, select, update
from sqlalchemy.orm import Session

from persistence.models import (
    TERMINAL_STATUSES,
    Job,
    JobStage,
    JobStatus,
    MRCShard,
    StageName,
    StageStatus,
    utcnow,
)
from persistence.stages import ClaimOutcome, LeaseLost, _fail
from persistence.transactions import cancel_job, load_job, load_stages, log_event, transaction

#: ``job_stages.lease_owner`` of an MRC stage whose work was handed to its shards.
SHARDED_OWNER = "shards"
SHARD_EVENT = "shard_finished"


@dataclass(frozen=True)
class ShardClaim:
    outcome: ClaimOutcome
    job: Job
    modules: list[str]
    inputs_key: str
    attempt: int = 0


def _rows_affected(session: Session, statement: Executable) -> int:
    result = session.execute(statement)
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


def _load_shard(session: Session, job_id: str, shard: int) -> MRCShard:
    query = (select(MRCShard).where(MRCShard.job_id == job_id, MRCShard.shard == shard)
             .execution_options(populate_existing=True))
    return session.execute(query).scalar_one()


def start_shards(session: Session, job_id: str, *, owner: str, groups: Sequence[Sequence[str]],
                 inputs_key: str, now: datetime | None = None) -> None:
    """Record one pending shard per module group and hand the MRC stage over to them, if ``owner``
    holds the stage's lease (else :class:`LeaseLost`). Shards of an earlier attempt are replaced."""
    now = now or utcnow()
    with transaction(session):
        job = load_job(session, job_id, for_update=True)
        handed = _rows_affected(session,
            update(JobStage)
            .where(JobStage.job_id == job_id, JobStage.stage == StageName.MRC,
                   JobStage.lease_owner == owner, JobStage.status == StageStatus.RUNNING)
            .values(lease_owner=SHARDED_OWNER, lease_expires_at=None)
            .execution_options(synchronize_session=False))
        if handed != 1 or job.status != JobStatus.RUNNING:
            raise LeaseLost(f"worker {owner} does not hold the MRC stage of job {job_id}")
        session.execute(delete(MRCShard).where(MRCShard.job_id == job_id))
        for index, modules in enumerate(groups):
            session.add(MRCShard(job_id=job_id, shard=index, modules=list(modules),
                                 inputs_key=inputs_key, status=StageStatus.PENDING, attempts=0,
                                 created_at=now))
        log_event(session, job_id, "mrc_sharded",
                  {"shards": len(groups), "modules": sum(len(g) for g in groups)}, now)


def claim_shard(session: Session, job_id: str, shard: int, *, owner: str, lease_seconds: float,
                max_attempts: int, now: datetime | None = None) -> ShardClaim:
    """Take shard ``shard`` for ``owner``: granted if it is pending or its lease expired, and it
    was claimed fewer than ``max_attempts`` times. DONE: the shard finished before (the caller
    may try the merge). EXHAUSTED fails the job with ``stage_failed_repeatedly``."""
    now = now or utcnow()
    with transaction(session):
        job = load_job(session, job_id, for_update=True)
        row = _load_shard(session, job_id, shard)
        if job.status in TERMINAL_STATUSES:
            return ShardClaim(ClaimOutcome.INACTIVE, job, row.modules, row.inputs_key)
        if job.cancel_requested:
            # Nobody runs the job any more once no shard holds a live lease: end it now.
            shards = session.execute(select(MRCShard).where(MRCShard.job_id == job_id)).scalars()
            if not any(s.status == StageStatus.RUNNING and s.lease_expires_at is not None
                       and s.lease_expires_at > now for s in shards):
                cancel_job(session, job, load_stages(session, job_id), now)
            return ShardClaim(ClaimOutcome.INACTIVE, job, row.modules, row.inputs_key)
        if row.status == StageStatus.DONE:
            return ShardClaim(ClaimOutcome.DONE, job, row.modules, row.inputs_key)
        claimed = _rows_affected(session,
            update(MRCShard)
            .where(MRCShard.job_id == job_id, MRCShard.shard == shard,
                   MRCShard.attempts < max_attempts,
                   or_(MRCShard.status == StageStatus.PENDING,
                       and_(MRCShard.status == StageStatus.RUNNING,
                            MRCShard.lease_expires_at < now)))
            .values(status=StageStatus.RUNNING, lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    attempts=MRCShard.attempts + 1)
            .execution_options(synchronize_session=False))
        row = _load_shard(session, job_id, shard)
        if claimed == 1:
            log_event(session, job_id, "shard_started",
                      {"stage": "mrc", "shard": shard, "attempt": row.attempts, "worker": owner},
                      now)
            return ShardClaim(ClaimOutcome.CLAIMED, job, row.modules, row.inputs_key,
                              row.attempts)
        if row.status == StageStatus.RUNNING and row.lease_expires_at is not None \
                and row.lease_expires_at > now:
            return ShardClaim(ClaimOutcome.HELD, job, row.modules, row.inputs_key)
        if row.attempts >= max_attempts:
            stage = session.execute(select(JobStage).where(
                JobStage.job_id == job_id, JobStage.stage == StageName.MRC)).scalar_one()
            _fail(session, job, stage, "stage_failed_repeatedly",
                  f"MRC shard {shard} was started {row.attempts} times (MAX_STAGE_ATTEMPTS="
                  f"{max_attempts}) without finishing. Last error: "
                  f"{row.last_error or 'the worker process died'}", now)
            return ShardClaim(ClaimOutcome.EXHAUSTED, job, row.modules, row.inputs_key)
        return ShardClaim(ClaimOutcome.INACTIVE, job, row.modules, row.inputs_key)


def renew_shard_lease(session: Session, job_id: str, shard: int, *, owner: str,
                      lease_seconds: float, now: datetime | None = None) -> bool:
    """Extend ``owner``'s lease on the shard; False if ``owner`` no longer holds it."""
    now = now or utcnow()
    with transaction(session):
        renewed = _rows_affected(session,
            update(MRCShard)
            .where(MRCShard.job_id == job_id, MRCShard.shard == shard,
                   MRCShard.lease_owner == owner, MRCShard.status == StageStatus.RUNNING)
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
            .execution_options(synchronize_session=False))
    return renewed == 1


def finish_shard(session: Session, job_id: str, shard: int, *, owner: str,
                 result: dict[str, Any], now: datetime | None = None) -> None:
    """Record the shard's part of the MRC table and mark it done, only while ``owner`` holds its
    lease and the job runs (else :class:`LeaseLost`, nothing written)."""
    now = now or utcnow()
    with transaction(session):
        job = load_job(session, job_id, for_update=True)
        if job.status != JobStatus.RUNNING:
            raise LeaseLost(f"job {job_id} is {job.status}; shard {shard} was not recorded")
        done = _rows_affected(session,
            update(MRCShard)
            .where(MRCShard.job_id == job_id, MRCShard.shard == shard,
                   MRCShard.lease_owner == owner, MRCShard.status == StageStatus.RUNNING)
            .values(status=StageStatus.DONE, lease_owner=None, lease_expires_at=None,
                    result=result, finished_at=now)
            .execution_options(synchronize_session=False))
        if done != 1:
            raise LeaseLost(f"worker {owner} no longer holds MRC shard {shard} of job {job_id}")
        log_event(session, job_id, SHARD_EVENT,
                  {"stage": "mrc", "shard": shard, "seconds": result.get("seconds")}, now)


def release_shard(session: Session, job_id: str, shard: int, *, owner: str, error: str) -> None:
    """Give the shard back after an unexpected error so that it can be retried."""
    with transaction(session):
        load_job(session, job_id, for_update=True)
        released = _rows_affected(session,
            update(MRCShard)
            .where(MRCShard.job_id == job_id, MRCShard.shard == shard,
                   MRCShard.lease_owner == owner, MRCShard.status == StageStatus.RUNNING)
            .values(status=StageStatus.PENDING, lease_owner=None, lease_expires_at=None,
                    last_error=error[:4000])
            .execution_options(synchronize_session=False))
        if released != 1:
            raise LeaseLost(f"worker {owner} does not hold MRC shard {shard} of job {job_id}")


def completed_parts(session: Session, job_id: str) -> list[dict[str, Any]] | None:
    """Every shard's recorded part in shard order, once all are done and the MRC stage still
    waits for them; None otherwise (a shard still runs, or the merge was recorded already)."""
    with transaction(session):
        stage = session.execute(select(JobStage).where(
            JobStage.job_id == job_id, JobStage.stage == StageName.MRC)
            .execution_options(populate_existing=True)).scalar_one()
        if stage.status != StageStatus.RUNNING or stage.lease_owner != SHARDED_OWNER:
            return None
        rows = session.execute(select(MRCShard).where(MRCShard.job_id == job_id)
                               .order_by(MRCShard.shard)
                               .execution_options(populate_existing=True)).scalars().all()
        if not rows or any(row.status != StageStatus.DONE or row.result is None for row in rows):
            return None
        return [dict(row.result) for row in rows if row.result is not None]


def list_shards(session: Session, job_id: str) -> list[MRCShard]:
    """The job's shard rows in shard order."""
    with transaction(session):
        return list(session.execute(select(MRCShard).where(MRCShard.job_id == job_id)
                                    .order_by(MRCShard.shard)
                                    .execution_options(populate_existing=True)).scalars())


def shards_to_redispatch(session: Session, *, stale_after: float, pending_after: float,
                         now: datetime | None = None) -> list[tuple[str, int]]:
    """(job id, shard) pairs whose message must be sent again: a running shard whose lease
    expired (its worker died), or a pending shard nobody took for ``pending_after`` seconds; and
    shard 0 of a job whose shards are all done but whose merge was never recorded (the worker died
    in between: a shard task that finds its shard done tries the merge). Jobs quiet for less than
    ``stale_after`` seconds are left alone; re-sent jobs get ``updated_at = now``."""
    now = now or utcnow()
    expired = and_(MRCShard.status == StageStatus.RUNNING, MRCShard.lease_expires_at < now)
    waiting = and_(MRCShard.status == StageStatus.PENDING,
                   MRCShard.created_at < now - timedelta(seconds=pending_after))
    with transaction(session):
        waiting_stage = and_(JobStage.job_id == Job.id, JobStage.stage == StageName.MRC,
                             JobStage.status == StageStatus.RUNNING,
                             JobStage.lease_owner == SHARDED_OWNER)
        quiet = and_(Job.status == JobStatus.RUNNING,
                     Job.updated_at < now - timedelta(seconds=stale_after))
        rows = session.execute(
            select(MRCShard.job_id, MRCShard.shard, MRCShard.status)
            .join(Job, Job.id == MRCShard.job_id).join(JobStage, waiting_stage)
            .where(quiet).order_by(MRCShard.job_id, MRCShard.shard)).all()
        found: list[tuple[str, int]] = []
        by_job: dict[str, list[tuple[int, str]]] = {}
        for job_id, shard, status in rows:
            by_job.setdefault(job_id, []).append((shard, status))
        for job_id, shards in by_job.items():
            if all(status == StageStatus.DONE for _, status in shards):
                found.append((job_id, shards[0][0]))
        stale = session.execute(
            select(MRCShard.job_id, MRCShard.shard)
            .join(Job, Job.id == MRCShard.job_id).join(JobStage, waiting_stage)
            .where(quiet, or_(expired, waiting))).all()
        found.extend((job_id, shard) for job_id, shard in stale)
        for job_id in {job_id for job_id, _ in found}:
            session.execute(update(Job).where(Job.id == job_id).values(updated_at=now)
                            .execution_options(synchronize_session=False))
        for job_id, shard in found:
            log_event(session, job_id, "shard_recovered", {"stage": "mrc", "shard": shard}, now)
    return found
