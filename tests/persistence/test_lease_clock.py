"""Leases are written and judged by the database's clock, not by each worker's own
(``persistence/db_clock.py``). On Postgres, workers on several machines share leases: with
each one's clock, a worker whose clock lags by more than a lease wrote leases the others read as
expired (its work taken over), and one whose clock ran ahead read everyone's as expired (it took
their work). Each case below is a worker with a skewed clock (``tests/clock_skew.py``) against
a worker with a right one: the lease stays with its holder.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

from persistence import models, stages
from persistence.db_clock import db_now
from persistence.models import utcnow
from persistence.stages import ClaimOutcome
from tests.clock_skew import skewed_datetime
from tests.persistence.helpers import LEASE

SKEW = 4 * LEASE  # seconds: far more than a lease


@pytest.fixture
def db_url(postgres_url: str) -> str:
    """Postgres only (the conftest's fixtures follow): SQLite has one clock, this process's."""
    return postgres_url


def test_the_database_clock_is_postgres_time_not_this_process(
        sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "datetime", skewed_datetime(-SKEW))
    with sessions() as session:
        told = db_now(session)
    assert abs((told - utcnow()).total_seconds() - SKEW) < 5  # the server's, not ours


@pytest.mark.parametrize(("holder", "other"), [(-SKEW, 0.0), (0.0, SKEW)],
                         ids=["holder-behind", "other-ahead"])
def test_a_lease_is_live_for_every_worker_whatever_their_clocks(
        sessions: sessionmaker[Session], new_job: Callable[..., str],
        monkeypatch: pytest.MonkeyPatch, holder: float, other: float) -> None:
    job_id = new_job(now=None)
    with monkeypatch.context() as clock:
        clock.setattr(models, "datetime", skewed_datetime(holder))
        with sessions() as session:
            claim = stages.claim_stage(session, job_id, "mrc", owner="holder",
                                       lease_seconds=LEASE, max_attempts=3)
        assert claim.outcome == ClaimOutcome.CLAIMED
        with sessions() as session:  # its heartbeat
            assert stages.renew_lease(session, job_id, "mrc", owner="holder",
                                      lease_seconds=LEASE)

    with monkeypatch.context() as clock:
        clock.setattr(models, "datetime", skewed_datetime(other))
        with sessions() as session:  # the other worker's recovery pass sends nothing
            assert stages.stages_to_redispatch(session, stale_after=LEASE,
                                               pending_after=3600) == []
        with sessions() as session:  # nor may its claim take the stage
            again = stages.claim_stage(session, job_id, "mrc", owner="other",
                                       lease_seconds=LEASE, max_attempts=3)
        assert again.outcome == ClaimOutcome.HELD

    with sessions() as session:
        row = session.get_one(models.JobStage, (job_id, "mrc"))
        assert (row.lease_owner, row.attempts) == ("holder", 1)
