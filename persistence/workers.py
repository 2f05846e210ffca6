"""The worker registry: which worker processes are running, what queues they consume and what
devices they have (table ``workers``).

A worker process registers when it is ready (:func:`register_worker`), renews ``last_seen_at``
every ``WORKER_HEARTBEAT_SECONDS`` (:func:`touch_worker`) and deletes its row when it shuts down
cleanly (:func:`deregister_worker`); the heartbeat thread is :mod:`worker.registry`. A worker not
seen for :data:`LIVE_HEARTBEATS` heartbeats is gone (killed, host down, database unreachable
from it): :func:`live_workers` leaves it out and the janitor deletes its row
(:func:`remove_stale_workers`). The API reads the live workers to refuse a job whose device none
of them has, or whose built-in dataset none of them holds in its ``DATA_ROOT``
(``api/services/workers.py``), and lists them at ``GET /v1/admin/workers``. The datasets are
written at registration and, when they change (files copied in later), with a heartbeat
(:func:`touch_worker`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from persistence.db_clock import db_now
from persistence.models import Worker, by_code_point
from persistence.transactions import transaction

#: Heartbeats a worker may miss before it counts as gone: one missed renewal (a slow query, a
#: brief database outage) must not make a running worker vanish.
LIVE_HEARTBEATS = 3


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker process registers: its id (the lease owner id of the stages it runs), host,
    queues, device counts by type, ``WORKER_DEVICE``, start time, and the built-in datasets its
    ``DATA_ROOT`` holds (None: not reported, counted as holding any)."""

    id: str
    hostname: str
    queues: list[str]
    devices: dict[str, int]
    device_override: str | None
    started_at: datetime
    datasets: list[str] | None = None


def register_worker(session: Session, info: WorkerInfo, *, now: datetime | None = None) -> None:
    """Insert the worker's row, or rewrite it when it exists (a registration retried after a
    database error, or after the janitor removed a worker that could not reach the database)."""
    now = now or db_now(session)
    with transaction(session):
        row = session.get(Worker, info.id)
        if row is None:
            row = Worker(id=info.id)
            session.add(row)
        row.hostname, row.queues, row.devices = info.hostname, list(info.queues), dict(info.devices)
        row.device_override, row.started_at, row.last_seen_at = (info.device_override,
                                                                 info.started_at, now)
        row.datasets = None if info.datasets is None else sorted(info.datasets)


def touch_worker(session: Session, worker_id: str, *, now: datetime | None = None,
                 datasets: list[str] | None = None) -> bool:
    """Renew the worker's ``last_seen_at``, and with ``datasets`` rewrite the datasets it holds
    (they changed); False when it has no row (register it again)."""
    values: dict[str, object] = {"last_seen_at": now or db_now(session)}
    if datasets is not None:
        values["datasets"] = sorted(datasets)
    with transaction(session):
        result = session.execute(update(Worker).where(Worker.id == worker_id).values(values))
    return bool(getattr(result, "rowcount", 0))


def deregister_worker(session: Session, worker_id: str) -> bool:
    """Delete the worker's row (a clean shutdown); False when there was none."""
    with transaction(session):
        result = session.execute(delete(Worker).where(Worker.id == worker_id))
    return bool(getattr(result, "rowcount", 0))


def live_cutoff(session: Session, heartbeat_seconds: float,
                now: datetime | None = None) -> datetime:
    """Workers last seen before this are gone (:data:`LIVE_HEARTBEATS` heartbeats ago, by the
    database's clock, which wrote ``last_seen_at``)."""
    return (now or db_now(session)) - timedelta(seconds=LIVE_HEARTBEATS * heartbeat_seconds)


def live_workers(session: Session, *, heartbeat_seconds: float, queue: str | None = None,
                 now: datetime | None = None) -> list[Worker]:
    """The workers seen within :data:`LIVE_HEARTBEATS` heartbeats, by id; with ``queue``, only
    those consuming it."""
    rows = session.execute(select(Worker).where(
        Worker.last_seen_at >= live_cutoff(session, heartbeat_seconds, now))).scalars()
    return [row for row in by_code_point(rows, lambda row: row.id)
            if queue is None or queue in (row.queues or [])]


def remove_stale_workers(session: Session, *, heartbeat_seconds: float,
                         now: datetime | None = None, dry_run: bool = False) -> list[str]:
    """Delete the rows of workers not seen for :data:`LIVE_HEARTBEATS` heartbeats; returns their
    ids. A worker that comes back (its database was unreachable) registers again."""
    cutoff = live_cutoff(session, heartbeat_seconds, now)
    with transaction(session):
        stale = list(session.execute(select(Worker.id).where(Worker.last_seen_at < cutoff)
                                     .order_by(Worker.id)).scalars())
        if stale and not dry_run:
            session.execute(delete(Worker).where(Worker.id.in_(stale),
                                                 Worker.last_seen_at < cutoff))
    return stale
