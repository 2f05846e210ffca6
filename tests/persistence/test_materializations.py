"""Materialization requests: one row per α of a job, asked again → the same row, failed or
lacking the evaluation asked now → queued again; finishing records the artifact too. The worker
making one holds a lease: a dead worker's row is queued again by the recovery function (then
failed after MAX_STAGE_ATTEMPTS claims) or taken over when its α is asked again, and a late
worker records nothing. A queued row whose message was lost is sent again once per
QUEUED_RESEND_AFTER_SECONDS, and the copy that comes second finds it claimed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs, materializations
from persistence.models import Job, Materialization
from persistence.stages import ArtifactRecord, LeaseLost
from tests.persistence.helpers import LEASE, T0, add_project, claim, finish

RESEND = 3600.0  # QUEUED_RESEND_AFTER_SECONDS
ARTIFACT = ArtifactRecord("tuned@0.5.safetensors", "jobs/x/materialized/tuned@0.5.safetensors",
                          10, "f" * 64, "application/octet-stream")


def _start(session: Session, row_id: str, owner: str = "w1", now: datetime = T0,
           max_attempts: int = 3) -> Materialization | None:
    return materializations.start_materialization(session, row_id, owner=owner,
                                                  lease_seconds=LEASE,
                                                  max_attempts=max_attempts, now=now)


def _row(sessions: sessionmaker[Session], row_id: str) -> Materialization:
    with sessions() as session:
        return session.get_one(Materialization, row_id)


def _succeeded(sessions: sessionmaker[Session], new_job: Callable[..., str]) -> str:
    job_id = new_job()
    for stage in ("mrc", "finetune", "interpolate"):
        claim(sessions, job_id, stage)
        finish(sessions, job_id, stage)
    return job_id


def test_requests_are_made_once_per_alpha(sessions: sessionmaker[Session],
                                          new_job: Callable[..., str]) -> None:
    job_id = _succeeded(sessions, new_job)
    with sessions() as session:
        first = materializations.request_materialization(session, job_id, 0.35, evaluate=False,
                                                         request_id="r1")
        assert first.must_dispatch and first.row.artifact_name == "tuned@0.35.safetensors"
        again = materializations.request_materialization(session, job_id, 0.35, evaluate=False)
        assert not again.must_dispatch and again.row.id == first.row.id
        other = materializations.request_materialization(session, job_id, 1.0, evaluate=False)
        assert other.must_dispatch and other.row.artifact_name == "tuned@1.safetensors"
        row_id = first.row.id

    with sessions() as session:
        assert _start(session, row_id) is not None
        assert _start(session, row_id, owner="w2") is None  # taken already
        artifact = ArtifactRecord("tuned@0.35.safetensors", "jobs/x/materialized/a", 10, "f" * 64,
                                  "application/octet-stream")
        materializations.finish_materialization(session, row_id, artifact, owner="w1",
                                                clean_accuracy=None, robust_accuracy=None)
    with sessions() as session:
        assert jobs.get_artifact(session, job_id, "tuned@0.35.safetensors") is not None
        # Done without evaluation: asking with evaluation queues it again, keeping the row.
        evaluated = materializations.request_materialization(session, job_id, 0.35, evaluate=True)
        assert evaluated.must_dispatch and evaluated.row.id == row_id
        assert evaluated.row.status == "queued" and evaluated.row.evaluate
        materializations.fail_materialization(session, row_id, "boom")
    with sessions() as session:
        retried = materializations.request_materialization(session, job_id, 0.35, evaluate=False)
        assert retried.must_dispatch and retried.row.error_message is None
        assert [r.alpha for r in materializations.list_materializations(session, job_id)] == [
            0.35, 1.0]


def test_only_succeeded_jobs_and_known_rows(sessions: sessionmaker[Session],
                                            new_job: Callable[..., str]) -> None:
    queued = new_job()
    with sessions() as session:
        with pytest.raises(materializations.JobNotSucceeded):
            materializations.request_materialization(session, queued, 0.5, evaluate=False)
        with pytest.raises(materializations.MaterializationNotFound):
            materializations.get_materialization(session, queued, "nope")


def test_evaluation_asked_for_an_alpha_under_way_is_never_lost_nor_made_twice(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    # Before: asking with evaluation queued the row again whatever its state. Queued: a second
    # message for it. Running: a second worker made the same weights alongside the first, and
    # the first one's end (succeeded, without evaluation) made the second skip it: the
    # evaluation asked for was never made, and asking again found it "done".
    job_id = _succeeded(sessions, new_job)
    with sessions() as session:
        row_id = materializations.request_materialization(session, job_id, 0.5,
                                                          evaluate=False).row.id
        joined = materializations.request_materialization(session, job_id, 0.5, evaluate=True)
    assert (joined.must_dispatch, joined.row.status, joined.row.evaluate) == (
        False, "queued", True)
    with sessions() as session:
        started = _start(session, row_id)
        assert started is not None and started.evaluate  # the worker sees the evaluation
        materializations.fail_materialization(session, row_id, "boom")
        requeued = materializations.request_materialization(session, job_id, 0.5,
                                                            evaluate=False)
        assert requeued.must_dispatch and requeued.row.evaluate  # the flag stays asked
        other = materializations.request_materialization(session, job_id, 0.7, evaluate=False)
        assert _start(session, other.row.id, now=datetime.now(T0.tzinfo)) is not None
    with sessions() as session, pytest.raises(materializations.MaterializationRunning,
                                              match="without evaluation"):
        materializations.request_materialization(session, job_id, 0.7, evaluate=True)
    with sessions() as session:
        running = materializations.request_materialization(session, job_id, 0.7, evaluate=False)
        assert (running.must_dispatch, running.row.status) == (False, "running")


def test_a_dead_workers_materialization_is_queued_again_then_failed_after_its_attempts(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    # Before the lease, a row whose worker died stayed running for ever, counted as pending.
    job_id = _succeeded(sessions, new_job)
    with sessions() as session:
        row_id = materializations.request_materialization(session, job_id, 0.5, evaluate=False,
                                                          now=T0).row.id
        assert _start(session, row_id, owner="w1", now=T0) is not None
    lease = timedelta(seconds=LEASE)

    def recover(now: datetime) -> list[str]:
        with sessions() as session:
            return materializations.materializations_to_redispatch(
                session, max_attempts=3, resend_after=RESEND, now=now)

    assert recover(T0 + lease / 2) == []  # w1 is alive
    with sessions() as session:
        assert materializations.renew_materialization_lease(session, row_id, owner="w1",
                                                            lease_seconds=LEASE,
                                                            now=T0 + lease / 2)
        assert not materializations.renew_materialization_lease(session, row_id, owner="w2",
                                                                lease_seconds=LEASE)
    assert recover(T0 + lease) == []  # renewed: live until 1.5 leases
    died = T0 + 2 * lease
    assert recover(died) == [row_id]
    row = _row(sessions, row_id)
    assert (row.status, row.lease_owner, row.lease_expires_at, row.attempts) == (
        "queued", None, None, 1)
    assert recover(died) == []  # every worker runs the loop: queued (and sent) once

    # w1 was only late: its lease is gone, so it records nothing (neither outcome).
    with sessions() as session:
        with pytest.raises(LeaseLost):
            materializations.finish_materialization(session, row_id, ARTIFACT, owner="w1",
                                                    clean_accuracy=None, robust_accuracy=None)
        with pytest.raises(LeaseLost):
            materializations.fail_materialization(session, row_id, "late", owner="w1")
        assert jobs.get_artifact(session, job_id, ARTIFACT.name) is None
        assert not materializations.renew_materialization_lease(session, row_id, owner="w1",
                                                                lease_seconds=LEASE)

    # Two more workers die with it; a message sent again for a running row whose lease expired
    # (Celery's redelivery) takes it over directly.
    with sessions() as session:
        started = _start(session, row_id, owner="w2", now=died)
        assert started is not None and started.attempts == 2 and started.started_at == T0
        assert _start(session, row_id, owner="w3", now=died + lease / 2) is None  # w2 is alive
        assert _start(session, row_id, owner="w3", now=died + 2 * lease) is not None
    assert _row(sessions, row_id).attempts == 3
    assert recover(died + 4 * lease) == []  # out of attempts: failed, not sent again
    row = _row(sessions, row_id)
    assert row.status == "failed" and row.lease_owner is None
    assert row.error_message is not None
    assert "stopped 3 times" in row.error_message and "MAX_STAGE_ATTEMPTS=3" in row.error_message

    # No longer pending: asking again queues it anew, its attempts starting over.
    with sessions() as session:
        again = materializations.request_materialization(session, job_id, 0.5, evaluate=False,
                                                         max_pending=1)
        assert (again.must_dispatch, again.row.status, again.row.attempts,
                again.row.error_message) == (True, "queued", 0, None)


def test_a_redelivered_message_fails_a_row_out_of_attempts(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = _succeeded(sessions, new_job)
    with sessions() as session:
        row_id = materializations.request_materialization(session, job_id, 0.5, evaluate=False,
                                                          now=T0).row.id
        assert _start(session, row_id, owner="w1", now=T0, max_attempts=1) is not None
        later = T0 + timedelta(seconds=2 * LEASE)
        assert _start(session, row_id, owner="w2", now=later, max_attempts=1) is None
    row = _row(sessions, row_id)
    assert row.status == "failed" and "MAX_STAGE_ATTEMPTS=1" in (row.error_message or "")


def test_an_alpha_asked_again_after_its_worker_died_is_taken_over_not_409(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    add_project(sessions, "p")
    job_id = _succeeded(sessions, new_job)
    with sessions() as session:
        session.get_one(Job, job_id).project_id = "p"
        session.commit()
        row_id = materializations.request_materialization(session, job_id, 0.7, evaluate=False,
                                                          now=T0).row.id
        assert _start(session, row_id, owner="w1", now=T0) is not None
    with sessions() as session, pytest.raises(materializations.MaterializationRunning):
        # w1 is alive: a second worker would make the same weights beside it.
        materializations.request_materialization(session, job_id, 0.7, evaluate=True,
                                                 now=T0 + timedelta(seconds=LEASE / 2))
    expired = T0 + timedelta(seconds=LEASE + 1)
    with sessions() as session:
        # The row is the project's only pending one: taken over, it is not counted again.
        taken = materializations.request_materialization(session, job_id, 0.7, evaluate=True,
                                                         now=expired, max_pending=1)
    assert (taken.must_dispatch, taken.row.id, taken.row.status, taken.row.evaluate,
            taken.row.lease_owner) == (True, row_id, "queued", True, None)
    artifact = ArtifactRecord("tuned@0.7.safetensors", "jobs/x/materialized/new", 10, "a" * 64,
                              "application/octet-stream")
    with sessions() as session:
        started = _start(session, row_id, owner="w2", now=expired)
        assert started is not None and started.evaluate
        materializations.finish_materialization(session, row_id, artifact, owner="w2",
                                                clean_accuracy=90.0, robust_accuracy=40.0)
    with sessions() as session, pytest.raises(LeaseLost):
        # The original worker, late, must not overwrite the new one's result.
        materializations.finish_materialization(
            session, row_id, ArtifactRecord("tuned@0.7.safetensors", "jobs/x/old", 9, "b" * 64,
                                            "application/octet-stream"),
            owner="w1", clean_accuracy=None, robust_accuracy=None)
    row = _row(sessions, row_id)
    assert (row.status, row.clean_accuracy, row.robust_accuracy) == ("succeeded", 90.0, 40.0)
    with sessions() as session:
        recorded = jobs.get_artifact(session, job_id, "tuned@0.7.safetensors")
    assert recorded is not None and recorded.storage_key == "jobs/x/materialized/new"


def test_deleting_the_job_of_a_leased_materialization(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = _succeeded(sessions, new_job)
    with sessions() as session:
        row_id = materializations.request_materialization(session, job_id, 0.5, evaluate=False,
                                                          now=T0).row.id
        assert _start(session, row_id, owner="w1", now=T0) is not None
    with sessions() as session:
        session.execute(delete(Job).where(Job.id == job_id))  # as DELETE /v1/jobs/{id} does
        session.commit()
    with sessions() as session:
        assert session.get(Materialization, row_id) is None
        assert not materializations.renew_materialization_lease(session, row_id, owner="w1",
                                                                lease_seconds=LEASE)
        with pytest.raises(materializations.MaterializationNotFound):
            materializations.finish_materialization(session, row_id, ARTIFACT, owner="w1",
                                                    clean_accuracy=None, robust_accuracy=None)
        materializations.fail_materialization(session, row_id, "gone", owner="w1")  # no-op
        assert materializations.materializations_to_redispatch(
            session, max_attempts=3, resend_after=RESEND, now=T0 + timedelta(hours=2)) == []


def test_a_queued_materialization_whose_message_was_lost_is_sent_again_once_per_period(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    # Before: only a running row's expired lease was looked for, so a row whose message was
    # lost before any worker took it (the API killed between its commit and the send, a broker
    # restarted without persistence) stayed queued for ever, counted as pending.
    job_id = _succeeded(sessions, new_job)
    with sessions() as session:
        row_id = materializations.request_materialization(session, job_id, 0.5, evaluate=False,
                                                          now=T0).row.id  # never sent

    def recover(now: datetime) -> list[str]:
        with sessions() as session:
            return materializations.materializations_to_redispatch(
                session, max_attempts=3, resend_after=RESEND, now=now)

    period = timedelta(seconds=RESEND)
    assert recover(T0 + period / 2) == []  # it may still wait behind a long queue
    late = T0 + period + timedelta(seconds=1)
    assert recover(late) == [row_id]
    assert recover(late) == []  # every worker runs the loop: sent once per period
    assert recover(late + period / 2) == []
    again = late + period + timedelta(seconds=1)
    assert recover(again) == [row_id]  # that copy was lost too: sent again
    assert _row(sessions, row_id).dispatched_at == again

    # The copy and the original, late, both arrive: one claim wins, the other does nothing.
    with sessions() as session:
        assert _start(session, row_id, owner="w1", now=again) is not None
        assert _start(session, row_id, owner="w2", now=again) is None
    row = _row(sessions, row_id)
    assert (row.status, row.lease_owner, row.attempts) == ("running", "w1", 1)
    assert recover(again + period * 2 - timedelta(seconds=LEASE * 2)) == [row_id]  # w1 died
    assert _row(sessions, row_id).status == "queued"


def test_a_materialization_handed_back_by_a_stopping_worker_is_queued_uncounted(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = _succeeded(sessions, new_job)
    with sessions() as session:
        row_id = materializations.request_materialization(session, job_id, 0.5,
                                                          evaluate=False).row.id
    for turn in range(4):  # more than MAX_STAGE_ATTEMPTS: never failed for it
        with sessions() as session:
            started = _start(session, row_id, owner=f"w{turn}")
            assert started is not None and started.attempts == 1
        with pytest.raises(LeaseLost), sessions() as session:
            materializations.hand_back_materialization(session, row_id, owner="someone-else")
        with sessions() as session:
            materializations.hand_back_materialization(session, row_id, owner=f"w{turn}",
                                                       now=T0 + timedelta(seconds=turn))
        row = _row(sessions, row_id)
        assert (row.status, row.attempts, row.lease_owner, row.dispatched_at) == (
            "queued", 0, None, T0 + timedelta(seconds=turn))


def test_a_failure_message_holding_nul_is_stored_on_both_databases(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    # Before: Postgres refused the NUL (SQLite stored it), so the failure was not recorded.
    job_id = _succeeded(sessions, new_job)
    with sessions() as session:
        row_id = materializations.request_materialization(session, job_id, 0.5,
                                                          evaluate=False).row.id
        materializations.fail_materialization(session, row_id, "no tensor 'a\x00b'")
    assert _row(sessions, row_id).error_message == "no tensor 'a\\x00b'"
