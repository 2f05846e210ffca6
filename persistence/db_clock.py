"""The one clock every lease is written and judged by: the database's.

A lease (``lease_expires_at`` of a stage, MRC shard, sweep candidate or materialization), a
worker's heartbeat and the times the recovery loop compares with them are read by every worker,
so they must come from one clock. Each process's own (``persistence.models.utcnow``) is not one:
a worker whose clock lags by more than ``WORKER_LEASE_SECONDS`` would write leases the others
read as already expired (its work taken over at every recovery pass), and one whose clock runs
ahead would read everyone's leases as expired and take their work.

Postgres answers ``clock_timestamp()``, the server's time when the statement runs, rather than
``now()``, which is the start of the transaction: a session that has held a transaction open
for a while (a read before the claim) would otherwise write a lease shorter by that long and
judge leases by a time already past. SQLite (the embedded default) is a file on one machine, so
every process shares one clock already: Python's is used, without a round trip.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from persistence.models import utcnow


def db_now(session: Session) -> datetime:
    """The database's current time (timezone-aware UTC) for ``session``: Postgres's
    ``clock_timestamp()``; on SQLite, this process's clock (one machine, one clock). On Postgres
    this runs a statement, so it begins the session's transaction if none is open."""
    if session.get_bind().dialect.name != "postgresql":
        return utcnow()
    value = session.execute(select(func.clock_timestamp())).scalar_one()
    assert isinstance(value, datetime)
    return value.astimezone(UTC)
