"""The work of a worker process known to be dead, handed over at once instead of after its leases
expire.

A prefork worker's parent sees its pool children exit: a child killed mid-task (the OOM-killer,
a SIGKILL) leaves its stage, part or materialization under a live lease, which only expires
``WORKER_LEASE_SECONDS`` after its last renewal, and the recovery loop then waits for the job to
be quiet that long again; its registry row counts as live for 3 heartbeats. The parent knows
better: :func:`release_dead_process` expires the leases of the dead child's owner id now (its
caller sends their messages again, and the claim that takes them over counts an attempt, as
after any crash) and deletes its registry row. Only for ids of this host's own children that
it saw exit: the owner id is ``host:pid:random``, and a pid says nothing on another host; the
caller passes ``host:pid:<family>`` (``worker.runtime.WorkerResources.owner_prefix``), since
containers on the host's network share a hostname with pid namespaces of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, select, update
from sqlalchemy.orm import Session

from persistence.db_clock import db_now
from persistence.leases import RUNNING, LeasedModel
from persistence.models import JobStage, Materialization, Worker
from persistence.stage_shards import CANDIDATES, MRC_SHARDS, PartKind
from persistence.transactions import EventKind, log_event, transaction


@dataclass
class ReleasedWork:
    """What :func:`release_dead_process` took back: (job id, stage), (job id, index) of MRC
    shards and sweep candidates, materialization ids, and the registry rows deleted."""

    stages: list[tuple[str, str]] = field(default_factory=list)
    shards: list[tuple[str, int]] = field(default_factory=list)
    candidates: list[tuple[str, int]] = field(default_factory=list)
    materializations: list[str] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)


def _held_by_prefix(model: LeasedModel, prefix: str) -> Any:
    return and_(model.status == RUNNING,
                model.lease_owner.startswith(prefix, autoescape=True))


def _expire(session: Session, model: LeasedModel, prefix: str, now: datetime) -> None:
    session.execute(update(model).where(_held_by_prefix(model, prefix))
                    .values(lease_expires_at=now)
                    .execution_options(synchronize_session=False))


def _parts(session: Session, kind: PartKind, prefix: str, now: datetime
           ) -> list[tuple[str, int]]:
    model = kind.model
    found = [(job_id, int(index)) for job_id, index in session.execute(
        select(model.job_id, kind.index).where(_held_by_prefix(model, prefix))
        .order_by(model.job_id, kind.index)).all()]
    _expire(session, model, prefix, now)
    for job_id, index in found:
        log_event(session, job_id, f"{kind.event}_recovered",
                  {"stage": kind.stage.value, kind.event: index, "reason": "worker_process_lost"},
                  now)
    return found


def release_dead_process(session: Session, owner_prefix: str, *,
                         now: datetime | None = None) -> ReleasedWork:
    """Expire now every lease held by an owner id starting with ``owner_prefix``
    (``"host:pid:"`` of a process known dead), log ``stage_recovered`` (``<part>_recovered``
    for parts) with ``reason: "worker_process_lost"``, and delete its registry rows, in one
    transaction; returns what was released, whose messages the caller sends once this has
    committed. Nothing is counted here: the claim that takes the work over counts its attempt."""
    now = now or db_now(session)
    released = ReleasedWork()
    with transaction(session):
        released.stages = [(job_id, str(stage)) for job_id, stage in session.execute(
            select(JobStage.job_id, JobStage.stage)
            .where(_held_by_prefix(JobStage, owner_prefix))
            .order_by(JobStage.job_id)).all()]
        _expire(session, JobStage, owner_prefix, now)
        for job_id, stage in released.stages:
            log_event(session, job_id, EventKind.STAGE_RECOVERED,
                      {"stage": stage, "reason": "worker_process_lost"}, now)
        released.shards = _parts(session, MRC_SHARDS, owner_prefix, now)
        released.candidates = _parts(session, CANDIDATES, owner_prefix, now)
        released.materializations = list(session.execute(
            select(Materialization.id)
            .where(_held_by_prefix(Materialization, owner_prefix))).scalars())
        _expire(session, Materialization, owner_prefix, now)
        released.workers = list(session.execute(
            select(Worker.id).where(Worker.id.startswith(owner_prefix, autoescape=True)))
            .scalars())
        if released.workers:
            session.execute(delete(Worker).where(Worker.id.in_(released.workers)))
    return released
