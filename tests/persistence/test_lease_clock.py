"""Leases are written and judged by the database's clock, not by each worker's own
(``persistence/db_clock.py``). On Postgres, workers on several machines share leases: with
each one's clock, a worker whose clock lags by more than a lease wrote leases the others read as
expired (its work taken over), and one whose clock ran ahead read everyone's as expired (it took
their work). Each case below is a worker with a skewed clock (``tests/clock_skew.py``) against
a worker with a right one: the lease (of a stage, an MRC shard, a materialization; a worker's
heartbeat) stays with its holder.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

from persistence import materializations, models, stage_shards, stages, time_limits, workers
from persistence.db_clock import db_now
from persistence.models import utcnow
from persistence.stages import ClaimOutcome
from tests.clock_skew import skewed_datetime
from tests.persistence.helpers import LEASE, claim, finish

SKEW = 4 * LEASE  # seconds: far more than a lease
RESEND = 3600.0  # QUEUED_RESEND_AFTER_SECONDS
CASES = pytest.mark.parametrize(("holder", "other"), [(-SKEW, 0.0), (0.0, SKEW)],
                                ids=["holder-behind", "other-ahead"])


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


@CASES
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


@CASES
def test_an_mrc_shard_lease_is_live_for_every_worker_whatever_their_clocks(
        sessions: sessionmaker[Session], new_job: Callable[..., str],
        monkeypatch: pytest.MonkeyPatch, holder: float, other: float) -> None:
    job_id = new_job(now=None)
    with sessions() as session:
        assert stages.claim_stage(session, job_id, "mrc", owner="w0", lease_seconds=LEASE,
                                  max_attempts=3).outcome == ClaimOutcome.CLAIMED
    with sessions() as session:
        stage_shards.start_shards(session, job_id, owner="w0", groups=[["conv1"]],
                                  inputs_key="jobs/x/mrc/attempt-1/adversarial.safetensors")
    with monkeypatch.context() as clock:
        clock.setattr(models, "datetime", skewed_datetime(holder))
        with sessions() as session:
            assert stage_shards.claim_shard(session, job_id, 0, owner="holder",
                                            lease_seconds=LEASE, max_attempts=3
                                            ).outcome == ClaimOutcome.CLAIMED
        with sessions() as session:
            assert stage_shards.renew_part_lease(session, stage_shards.MRC_SHARDS, job_id, 0,
                                                 owner="holder", lease_seconds=LEASE)
    with monkeypatch.context() as clock:
        clock.setattr(models, "datetime", skewed_datetime(other))
        with sessions() as session:
            assert stage_shards.shards_to_redispatch(session, stale_after=LEASE,
                                                     pending_after=RESEND) == []
        with sessions() as session:
            assert stage_shards.claim_shard(session, job_id, 0, owner="other",
                                            lease_seconds=LEASE, max_attempts=3
                                            ).outcome == ClaimOutcome.HELD


@CASES
def test_a_materialization_lease_is_live_for_every_worker_whatever_their_clocks(
        sessions: sessionmaker[Session], new_job: Callable[..., str],
        monkeypatch: pytest.MonkeyPatch, holder: float, other: float) -> None:
    job_id = new_job()
    for stage in ("mrc", "finetune", "interpolate"):
        claim(sessions, job_id, stage)
        finish(sessions, job_id, stage)
    with sessions() as session:
        row_id = materializations.request_materialization(session, job_id, 0.5,
                                                          evaluate=False).row.id
    with monkeypatch.context() as clock:
        clock.setattr(models, "datetime", skewed_datetime(holder))
        with sessions() as session:
            assert materializations.start_materialization(
                session, row_id, owner="holder", lease_seconds=LEASE, max_attempts=3) is not None
    with monkeypatch.context() as clock:
        clock.setattr(models, "datetime", skewed_datetime(other))
        with sessions() as session:
            assert materializations.materializations_to_redispatch(
                session, max_attempts=3, resend_after=RESEND) == []
        with sessions() as session:
            assert materializations.start_materialization(
                session, row_id, owner="other", lease_seconds=LEASE, max_attempts=3) is None


@CASES
def test_a_workers_heartbeat_is_live_for_every_worker_whatever_their_clocks(
        sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch,
        holder: float, other: float) -> None:
    heartbeat = LEASE / 3  # live for LIVE_HEARTBEATS of them: far less than the skew
    with monkeypatch.context() as clock:
        clock.setattr(models, "datetime", skewed_datetime(holder))
        with sessions() as session:
            workers.register_worker(session, workers.WorkerInfo(
                id="host:1:aa", hostname="host", queues=["rift"], devices={"cpu": 1},
                device_override=None, started_at=utcnow()))
    with monkeypatch.context() as clock:
        clock.setattr(models, "datetime", skewed_datetime(other))
        with sessions() as session:
            assert [w.id for w in workers.live_workers(session, heartbeat_seconds=heartbeat)] \
                == ["host:1:aa"]
        with sessions() as session:
            assert workers.remove_stale_workers(session, heartbeat_seconds=heartbeat) == []


@CASES
def test_a_jobs_time_limit_is_judged_by_the_database_clock(
        sessions: sessionmaker[Session], new_job: Callable[..., str],
        monkeypatch: pytest.MonkeyPatch, holder: float, other: float) -> None:
    # Before: a job whose claimer lagged looked two minutes older to every other worker's
    # recovery pass, and every job looked two minutes older to a pass whose clock ran ahead:
    # either failed it with `timeout` with most of its limit left.
    job_id = new_job(now=None)
    with monkeypatch.context() as clock:
        clock.setattr(models, "datetime", skewed_datetime(holder))
        with sessions() as session:
            assert stages.claim_stage(session, job_id, "mrc", owner="holder",
                                      lease_seconds=LEASE, max_attempts=3
                                      ).outcome == ClaimOutcome.CLAIMED
    with monkeypatch.context() as clock:
        clock.setattr(models, "datetime", skewed_datetime(other))
        with sessions() as session:
            assert time_limits.fail_overdue_jobs(session, limit_seconds=2 * LEASE,
                                                 grace_seconds=LEASE) == []
