"""Recording the end of leased work (a stage, an MRC shard, a sweep candidate, a
materialization) through a database outage.

The work's outputs are stored before its finishing transaction records them; when that
transaction met an unreachable database (a restart, a failover), the work used to be given
back through the same database, which failed too, and waited for its lease to expire: the
recovery loop then ran it again from its start (hours of fine-tuning, for a two-second
failover). Here the worker, still holding the lease (its heartbeat thread renews it through the
outage, :class:`worker.runtime.LeaseHeartbeat`), tries the transaction again until the database
answers, for at most a lease length. A commit whose answer the outage took cannot be told from
one refused by its error, so each try first reads whether the earlier one landed (the caller's
``landed``, e.g. :func:`persistence.stages.recorded_finish`): the finish is then taken as done,
not made twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import exc as database_errors
from sqlalchemy.orm import Session

from persistence.stages import LeaseLost
from worker.retry_delays import FIRST_RETRY_DELAY_S, next_retry_delay
from worker.runtime import DATABASE_DOWN, LeaseHeartbeat

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class _Unreachable:
    """What a try met instead of an answer: the database could not be reached."""

    error: Exception


def _unless_unreachable(lease: LeaseHeartbeat, work: Callable[[Session], R]) -> R | _Unreachable:
    """Run ``work`` in a session of its own and return what it returns; an unreachable
    database is returned (kept for the next try), any other error raised."""
    try:
        with lease.resources.session() as session:
            return work(session)
    except Exception as exc:
        if not database_unreachable(exc):
            raise
        return _Unreachable(exc)


def database_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached (not that it refused the
    statement): :data:`worker.runtime.DATABASE_DOWN`, or a driver error that invalidated its
    connection."""
    return isinstance(exc, DATABASE_DOWN) or (
        isinstance(exc, database_errors.DBAPIError) and exc.connection_invalidated)


def record_finish(lease: LeaseHeartbeat, finish: Callable[[Session], T],
                  landed: Callable[[Session], T | None], *,
                  clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``finish`` (the work's finishing transaction, given a session) under ``lease``, and
    return what it returns. When it meets an unreachable database, try again after a capped
    exponential backoff, each try preceded by ``landed``: a read of whether an earlier try
    committed unseen, None if not, else what that try would have returned (returned then).
    ``landed`` must be exact (what the transaction writes, at this claim's attempt): a finish
    made by a takeover is not this one's. Raises the last error once a lease length
    (``WORKER_LEASE_SECONDS``) has passed since the first, :class:`LeaseLost` once the
    heartbeat found the work taken over, and any other error at once."""
    lease.begin_finish()
    outcome = _unless_unreachable(lease, finish)
    if not isinstance(outcome, _Unreachable):
        return outcome
    error = outcome.error
    deadline = clock() + lease.resources.settings.worker_lease_seconds
    delay = FIRST_RETRY_DELAY_S
    while True:
        if lease.lease_lost:
            raise LeaseLost(f"lost the lease on {lease.what} while the database was "
                            "unreachable")
        if clock() + delay > deadline:
            logger.warning("%s: the database stayed unreachable for a lease length; its end is "
                           "left to the lease", lease.what)
            raise error
        logger.warning("%s: could not record its end, the database is unreachable (%s: %s); "
                       "trying again in %.1f s", lease.what, type(error).__name__,
                       (str(error).splitlines() or [""])[0][:300], delay)
        sleep(delay)
        delay = next_retry_delay(delay)
        made = _unless_unreachable(lease, landed)
        if isinstance(made, _Unreachable):
            error = made.error
            continue
        if made is not None:
            logger.info("%s: its end had been recorded (the answer was lost to the "
                        "outage)", lease.what)
            return made
        outcome = _unless_unreachable(lease, finish)
        if not isinstance(outcome, _Unreachable):
            return outcome
        error = outcome.error
