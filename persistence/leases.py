"""The lease every piece of worker work is held under, whatever its table: a job's stage
(:mod:`persistence.stages`), an MRC shard or sweep candidate (:mod:`persistence.stage_shards`), a
materialization (:mod:`persistence.materializations`).

Each such row has ``status``, ``lease_owner`` (the worker id), ``lease_expires_at`` and
``attempts`` (claims so far). A claim is one conditional UPDATE (:func:`claimable` in its WHERE,
:func:`claimed_values` as its values), so of two workers only one wins: the second UPDATE
re-checks its WHERE once the first commits. A heartbeat extends the lease while the work runs
(:func:`renew`); writes that end the work match :func:`held_by`, so a worker whose lease was taken
over writes nothing. Once the lease has expired (the worker died) another claim may take it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import CursorResult, Executable, and_, or_, update
from sqlalchemy.orm import Session

from persistence.models import JobStage, Materialization, MRCShard, SweepCandidate

#: The status of leased work being done; the same word in every leased table's status enum.
RUNNING = "running"

LeasedModel = type[JobStage] | type[MRCShard] | type[SweepCandidate] | type[Materialization]


class LeasedRow(Protocol):
    @property
    def status(self) -> str: ...

    @property
    def lease_expires_at(self) -> datetime | None: ...


def rows_affected(session: Session, statement: Executable) -> int:
    """Run an UPDATE and return how many rows it changed (the test of a conditional claim)."""
    result = session.execute(statement)
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


def is_live(row: LeasedRow, now: datetime) -> bool:
    """True while a worker holds ``row`` under a lease that has not expired at ``now``."""
    return (row.status == RUNNING and row.lease_expires_at is not None
            and row.lease_expires_at > now)


def claimable(model: LeasedModel, *, waiting: str, max_attempts: int, now: datetime) -> Any:
    """WHERE clause of a claim: the row waits (status ``waiting``) or runs under a lease expired
    at ``now`` (its worker died), and was claimed fewer than ``max_attempts`` times."""
    return and_(model.attempts < max_attempts,
                or_(model.status == waiting,
                    and_(model.status == RUNNING, model.lease_expires_at < now)))


def claimed_values(model: LeasedModel, *, owner: str, lease_seconds: float,
                   now: datetime) -> dict[str, Any]:
    """The values a claim sets: running, held by ``owner`` for ``lease_seconds``, one more
    attempt."""
    return {"status": RUNNING, "lease_owner": owner,
            "lease_expires_at": now + timedelta(seconds=lease_seconds),
            "attempts": model.attempts + 1}


def held_by(model: LeasedModel, owner: str) -> Any:
    """WHERE clause: ``owner`` holds the row's lease (expired or not: until another claim takes
    it over, the work is still that worker's)."""
    return and_(model.lease_owner == owner, model.status == RUNNING)


def renew(session: Session, model: LeasedModel, where: Sequence[Any], *, owner: str,
          lease_seconds: float, now: datetime) -> bool:
    """Extend ``owner``'s lease on the row ``where`` selects (in the caller's transaction);
    False if ``owner`` no longer holds it (taken over, ended, or the row is gone)."""
    renewed = rows_affected(session, update(model)
                            .where(*where, held_by(model, owner))
                            .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
                            .execution_options(synchronize_session=False))
    return renewed == 1
