"""The database layer (persistence/jobs.py) against real SQLite and real Postgres schemas, both
built by the Alembic migrations."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs
from persistence.db import create_db_engine, create_session_factory
from persistence.jobs import ArtifactRecord, ClaimOutcome, StageOutputs
from persistence.migrate import downgrade_database, upgrade_database
from persistence.models import (
    Base,
    JobEvent,
    JobStage,
    JobStatus,
    StageStatus,
)
from persistence.records import create_checkpoint

pytestmark = pytest.mark.service

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
LEASE = 30.0
SPEC = {"architecture": {"name": "small_cnn"}, "dataset": {"name": "digits"}}


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(db_url)
    yield create_session_factory(engine)
    engine.dispose()


@pytest.fixture
def checkpoint_id(sessions: sessionmaker[Session]) -> str:
    with sessions() as session:
        return create_checkpoint(
            session, filename="model.safetensors", size=123, sha256="0" * 64,
            format="safetensors", storage_key="checkpoints/x.safetensors", num_tensors=4,
            num_parameters=1000).id


@pytest.fixture
def new_job(sessions: sessionmaker[Session], checkpoint_id: str) -> Callable[..., str]:
    def create(labels: dict[str, str] | None = None, now: datetime = T0, **kwargs: Any) -> str:
        with sessions() as session:
            job, created = jobs.create_job(session, spec=SPEC, checkpoint_id=checkpoint_id,
                                           labels=labels, now=now, **kwargs)
            assert created
            return job.id
    return create


def claim(sessions: sessionmaker[Session], job_id: str, stage: str = "mrc", owner: str = "w1",
          now: datetime = T0, max_attempts: int = 3) -> jobs.StageClaim:
    with sessions() as session:
        return jobs.claim_stage(session, job_id, stage, owner=owner, lease_seconds=LEASE,
                                max_attempts=max_attempts, now=now)


def finish(sessions: sessionmaker[Session], job_id: str, stage: str, owner: str = "w1",
           outputs: StageOutputs | None = None, now: datetime = T0) -> None:
    with sessions() as session:
        jobs.finish_stage(session, job_id, stage, owner=owner, outputs=outputs or StageOutputs(),
                          now=now)


def stage_row(sessions: sessionmaker[Session], job_id: str, stage: str) -> JobStage:
    with sessions() as session:
        return session.get_one(JobStage, (job_id, stage))


def event_kinds(sessions: sessionmaker[Session], job_id: str) -> list[str]:
    with sessions() as session:
        return [event.kind for event in jobs.list_events(session, job_id)]


MRC_ROWS = [
    {"name": "conv1", "parameters": 100, "mrc": 0.5, "worst_robust_loss": 1.5,
     "robust_accuracy_at_worst": 30.0, "robust_accuracy_drop": 10.0, "seconds": 0.1},
    {"name": "fc", "parameters": 50, "mrc": 0.1, "worst_robust_loss": 1.1,
     "robust_accuracy_at_worst": 38.0, "robust_accuracy_drop": 2.0, "seconds": 0.1},
]


# --------------------------------------------------------------------------------------------
# Migrations
# --------------------------------------------------------------------------------------------
def test_migrations_build_exactly_the_models_schema_and_downgrade_cleanly(db_url: str) -> None:
    engine = create_db_engine(db_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
        downgrade_database(db_url)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade_database(db_url)
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------
# Creating jobs
# --------------------------------------------------------------------------------------------
def test_create_job_records_stages_labels_and_an_event(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job(labels={"team": "vision", "run": "7"})
    with sessions() as session:
        job = jobs.get_job(session, job_id)
        assert job.status == JobStatus.QUEUED and job.stage is None
        assert job.label_dict == {"team": "vision", "run": "7"}
        assert [(s.stage, s.status, s.attempts) for s in job.stages] == [
            ("mrc", "pending", 0), ("finetune", "pending", 0), ("interpolate", "pending", 0)]
        assert job.spec == SPEC
        assert job.created_at == T0 and job.created_at.tzinfo is not None
    assert event_kinds(sessions, job_id) == ["job_created"]


def test_idempotency_key_returns_the_same_job_or_conflicts(
        sessions: sessionmaker[Session], checkpoint_id: str) -> None:
    fingerprint = jobs.request_fingerprint({"spec": SPEC, "checkpoint_id": checkpoint_id})
    assert fingerprint == jobs.request_fingerprint({"checkpoint_id": checkpoint_id, "spec": SPEC})
    with sessions() as session:
        first, created = jobs.create_job(session, spec=SPEC, checkpoint_id=checkpoint_id,
                                         idempotency_key="key-1", request_hash=fingerprint)
        assert created
    with sessions() as session:
        again, created = jobs.create_job(session, spec=SPEC, checkpoint_id=checkpoint_id,
                                         idempotency_key="key-1", request_hash=fingerprint)
        assert not created and again.id == first.id
    with sessions() as session, pytest.raises(jobs.IdempotencyConflict, match="key-1"):
        jobs.create_job(session, spec={**SPEC, "seed": 1}, checkpoint_id=checkpoint_id,
                        idempotency_key="key-1", request_hash="f" * 64)


def test_concurrent_requests_with_one_idempotency_key_create_one_job(
        sessions: sessionmaker[Session], checkpoint_id: str) -> None:
    barrier = threading.Barrier(4)
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            with sessions() as session:
                barrier.wait()
                job, created = jobs.create_job(session, spec=SPEC, checkpoint_id=checkpoint_id,
                                               idempotency_key="same", request_hash="h")
                results.append((job.id, created))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


# --------------------------------------------------------------------------------------------
# Leases
# --------------------------------------------------------------------------------------------
def test_only_one_of_two_workers_claims_a_stage(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    first = claim(sessions, job_id, owner="w1")
    second = claim(sessions, job_id, owner="w2", now=T0 + timedelta(seconds=1))
    assert (first.outcome, first.attempt) == (ClaimOutcome.CLAIMED, 1)
    assert second.outcome == ClaimOutcome.HELD
    row = stage_row(sessions, job_id, "mrc")
    assert (row.status, row.lease_owner, row.attempts) == ("running", "w1", 1)
    assert row.lease_expires_at == T0 + timedelta(seconds=LEASE)
    with sessions() as session:
        job = jobs.get_job(session, job_id)
        assert (job.status, job.stage, job.started_at) == ("running", "mrc", T0)


def test_concurrent_claims_have_exactly_one_winner(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    barrier = threading.Barrier(6)
    outcomes: list[ClaimOutcome] = []

    def race(owner: str) -> None:
        with sessions() as session:
            barrier.wait()
            outcomes.append(jobs.claim_stage(session, job_id, "mrc", owner=owner,
                                             lease_seconds=LEASE, max_attempts=3).outcome)

    threads = [threading.Thread(target=race, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == sorted([ClaimOutcome.CLAIMED] + [ClaimOutcome.HELD] * 5)
    assert stage_row(sessions, job_id, "mrc").attempts == 1


def test_an_expired_lease_is_reclaimed_and_the_old_holder_cannot_write(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    assert claim(sessions, job_id, owner="dead").outcome == ClaimOutcome.CLAIMED
    later = T0 + timedelta(seconds=LEASE + 1)
    taken = claim(sessions, job_id, owner="alive", now=later)
    assert (taken.outcome, taken.attempt) == (ClaimOutcome.CLAIMED, 2)
    with sessions() as session:
        assert not jobs.renew_lease(session, job_id, "mrc", owner="dead", lease_seconds=LEASE)
        assert jobs.renew_lease(session, job_id, "mrc", owner="alive", lease_seconds=LEASE,
                                now=later)
    with pytest.raises(jobs.LeaseLost):
        finish(sessions, job_id, "mrc", owner="dead", outputs=StageOutputs(mrc_rows=MRC_ROWS))
    with sessions() as session:
        assert jobs.get_mrc_rows(session, job_id) == []
    finish(sessions, job_id, "mrc", owner="alive", outputs=StageOutputs(mrc_rows=MRC_ROWS))
    with sessions() as session:
        assert [row.module for row in jobs.get_mrc_rows(session, job_id)] == ["conv1", "fc"]


def test_renewing_keeps_the_lease(sessions: sessionmaker[Session],
                                  new_job: Callable[..., str]) -> None:
    job_id = new_job()
    claim(sessions, job_id, owner="w1")
    renewed_at = T0 + timedelta(seconds=LEASE - 1)
    with sessions() as session:
        assert jobs.renew_lease(session, job_id, "mrc", owner="w1", lease_seconds=LEASE,
                                now=renewed_at)
    outcome = claim(sessions, job_id, owner="w2", now=T0 + timedelta(seconds=LEASE + 1)).outcome
    assert outcome == ClaimOutcome.HELD


def test_stages_run_in_order_and_a_done_stage_is_not_claimed_again(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    assert claim(sessions, job_id, "finetune").outcome == ClaimOutcome.NOT_READY
    claim(sessions, job_id, "mrc")
    finish(sessions, job_id, "mrc", outputs=StageOutputs(mrc_rows=MRC_ROWS, selected_module="fc"))
    assert claim(sessions, job_id, "mrc", owner="w2").outcome == ClaimOutcome.DONE
    assert claim(sessions, job_id, "finetune", owner="w2").outcome == ClaimOutcome.CLAIMED
    assert stage_row(sessions, job_id, "mrc").attempts == 1


def test_a_stage_out_of_attempts_fails_the_job(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    now = T0
    for attempt in (1, 2):
        result = claim(sessions, job_id, owner=f"w{attempt}", now=now, max_attempts=2)
        assert result.outcome == ClaimOutcome.CLAIMED
        now += timedelta(seconds=LEASE + 1)  # the worker dies; its lease runs out
    result = claim(sessions, job_id, owner="w3", now=now, max_attempts=2)
    assert result.outcome == ClaimOutcome.EXHAUSTED
    with sessions() as session:
        job = jobs.get_job(session, job_id)
        assert (job.status, job.error_code, job.stage) == (
            "failed", "stage_failed_repeatedly", "mrc")
        assert "2 times" in (job.error_message or "")
    assert stage_row(sessions, job_id, "mrc").status == StageStatus.FAILED
    assert claim(sessions, job_id, owner="w4", now=now).outcome == ClaimOutcome.INACTIVE


def test_release_after_an_error_allows_a_retry(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    claim(sessions, job_id, owner="w1")
    with sessions() as session:
        assert jobs.release_stage(session, job_id, "mrc", owner="w1", error="OSError: disk") == 1
    row = stage_row(sessions, job_id, "mrc")
    assert (row.status, row.lease_owner, row.last_error) == ("pending", None, "OSError: disk")
    with sessions() as session, pytest.raises(jobs.LeaseLost):
        jobs.release_stage(session, job_id, "mrc", owner="w1", error="again")
    retry = claim(sessions, job_id, owner="w2", now=T0 + timedelta(seconds=1))
    assert (retry.outcome, retry.attempt) == (ClaimOutcome.CLAIMED, 2)
    assert event_kinds(sessions, job_id)[-2:] == ["stage_retry", "stage_started"]
    with sessions() as session, pytest.raises(jobs.LeaseLost):
        jobs.fail_job(session, job_id, "invalid_config", "bad", owner="w1")
    with sessions() as session:
        assert jobs.fail_job(session, job_id, "invalid_config", "bad", owner="w2").status == (
            "failed")


# --------------------------------------------------------------------------------------------
# Finishing stages
# --------------------------------------------------------------------------------------------
def test_finishing_a_stage_is_one_transaction(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    claim(sessions, job_id)
    broken = [*MRC_ROWS, {"parameters": 1, "mrc": 0.2, "worst_robust_loss": 1.0}]  # no name
    with pytest.raises(IntegrityError):
        finish(sessions, job_id, "mrc", outputs=StageOutputs(
            mrc_rows=broken, selected_module="fc", artifacts=[ArtifactRecord(
                "mrc.csv", "jobs/x/mrc.csv", 10, "a" * 64, "text/csv")]))
    row = stage_row(sessions, job_id, "mrc")
    assert (row.status, row.lease_owner) == ("running", "w1")
    with sessions() as session:
        job = jobs.get_job(session, job_id)
        assert job.selected_module is None and job.stage == "mrc"
        assert jobs.get_mrc_rows(session, job_id) == []
        assert jobs.list_artifacts(session, job_id) == []
    assert "stage_finished" not in event_kinds(sessions, job_id)


def test_a_job_runs_through_all_stages_to_success(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    claim(sessions, job_id, "mrc")
    csv = ArtifactRecord("mrc.csv", f"jobs/{job_id}/artifacts/mrc.csv", 42, "c" * 64, "text/csv")
    finish(sessions, job_id, "mrc", outputs=StageOutputs(
        mrc_rows=MRC_ROWS, artifacts=[csv], selected_module="fc",
        metrics={"baseline_robust_accuracy": 40.0}, summary={"modules": 2}))
    with sessions() as session:
        job = jobs.get_job(session, job_id)
        assert (job.status, job.stage, job.selected_module) == ("running", "finetune", "fc")

    claim(sessions, job_id, "finetune")
    epochs = [{"epoch": e, "lr": 0.01, "train_loss": 1.0 / e, "train_accuracy": 80.0 + e,
               "val_accuracy": 70.0 + e, "seconds": 0.5} for e in (1, 2)]
    finish(sessions, job_id, "finetune", outputs=StageOutputs(epochs=epochs,
                                                              metrics={"best_epoch": 2}))
    claim(sessions, job_id, "interpolate")
    points = [{"alpha": a, "clean_accuracy": 80 + a, "robust_accuracy": 40 - a}
              for a in (0.0, 0.5, 1.0)]
    tuned = ArtifactRecord("tuned.safetensors", f"jobs/{job_id}/artifacts/tuned.safetensors",
                           1000, "d" * 64, "application/octet-stream")
    finish(sessions, job_id, "interpolate", now=T0 + timedelta(minutes=5), outputs=StageOutputs(
        interpolation_points=points, chosen_alpha=0.5, artifacts=[tuned],
        metrics={"before": {"clean_accuracy": 80.0}, "after": {"clean_accuracy": 80.5}}))

    with sessions() as session:
        job = jobs.get_job(session, job_id)
        assert (job.status, job.stage, job.stage_progress) == ("succeeded", None, 1.0)
        assert job.finished_at == T0 + timedelta(minutes=5)
        assert job.chosen_alpha == 0.5
        assert job.metrics == {"baseline_robust_accuracy": 40.0, "best_epoch": 2,
                               "before": {"clean_accuracy": 80.0},
                               "after": {"clean_accuracy": 80.5}}
        assert [s.status for s in job.stages] == ["done", "done", "done"]
        assert [(m.epoch, m.val_accuracy) for m in jobs.get_epoch_metrics(session, job_id)] == [
            (1, 71.0), (2, 72.0)]
        assert [p.alpha for p in jobs.get_interpolation_points(session, job_id)] == [0, 0.5, 1]
        assert [a.name for a in jobs.list_artifacts(session, job_id)] == [
            "mrc.csv", "tuned.safetensors"]
        assert jobs.get_artifact(session, job_id, "mrc.csv") is not None
        assert jobs.get_artifact(session, job_id, "result.json") is None
        events = jobs.list_events(session, job_id)
    kinds = [event.kind for event in events]
    assert kinds.count("stage_started") == 3 and kinds.count("stage_finished") == 3
    assert kinds[-1] == "job_succeeded"
    assert events[kinds.index("stage_finished")].payload == {"stage": "mrc", "modules": 2}


def test_progress_is_written_only_for_the_running_stage(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    claim(sessions, job_id)
    with sessions() as session:
        jobs.update_progress(session, job_id, "mrc", 0.25, "scored conv1")
        jobs.update_progress(session, job_id, "finetune", 0.9, "not running")
        jobs.set_job_device(session, job_id, "cpu")
        job = jobs.get_job(session, job_id)
        assert (job.stage_progress, job.progress_message, job.device) == (
            0.25, "scored conv1", "cpu")


def test_events_page_by_id(sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    with sessions() as session:
        for epoch in range(5):
            jobs.append_event(session, job_id, "epoch", {"epoch": epoch})
        first = jobs.list_events(session, job_id, limit=3)
        rest = jobs.list_events(session, job_id, after_id=first[-1].id)
    assert [e.kind for e in first] == ["job_created", "epoch", "epoch"]
    assert [e.payload["epoch"] for e in rest] == [2, 3, 4]
    assert first[0].created_at.tzinfo is not None


# --------------------------------------------------------------------------------------------
# Cancellation
# --------------------------------------------------------------------------------------------
def test_cancelling_a_queued_job_ends_it_at_once(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    with sessions() as session:
        job = jobs.request_cancel(session, job_id, now=T0)
        assert (job.status, job.cancel_requested, job.finished_at) == ("cancelled", True, T0)
    assert claim(sessions, job_id).outcome == ClaimOutcome.INACTIVE
    assert stage_row(sessions, job_id, "mrc").attempts == 0
    with sessions() as session, pytest.raises(jobs.JobAlreadyFinished, match="cancelled"):
        jobs.request_cancel(session, job_id)


def test_cancelling_a_running_job_asks_its_worker(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    claim(sessions, job_id)
    with sessions() as session:
        assert not jobs.should_stop(session, job_id)
        job = jobs.request_cancel(session, job_id, now=T0 + timedelta(seconds=1))
        assert (job.status, job.cancel_requested) == ("running", True)
        assert jobs.should_stop(session, job_id)
        job = jobs.mark_cancelled(session, job_id)
        assert job.status == "cancelled"
    assert stage_row(sessions, job_id, "mrc").status == StageStatus.CANCELLED
    assert event_kinds(sessions, job_id)[-2:] == ["cancel_requested", "job_cancelled"]


def test_cancelling_between_stages_or_after_a_crash_ends_the_job(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    claim(sessions, job_id)
    finish(sessions, job_id, "mrc", outputs=StageOutputs(mrc_rows=MRC_ROWS, selected_module="fc"))
    with sessions() as session:
        assert jobs.request_cancel(session, job_id, now=T0).status == "cancelled"
    assert stage_row(sessions, job_id, "mrc").status == StageStatus.DONE  # MRC stays recorded

    crashed = new_job()
    claim(sessions, crashed)
    with sessions() as session:
        job = jobs.request_cancel(session, crashed, now=T0 + timedelta(seconds=LEASE + 1))
        assert job.status == "cancelled"


def test_a_finished_job_cannot_be_cancelled(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    claim(sessions, job_id)
    with sessions() as session:
        jobs.fail_job(session, job_id, "invalid_config", "module 'x' does not exist")
        with pytest.raises(jobs.JobAlreadyFinished, match="failed"):
            jobs.request_cancel(session, job_id)
        job = jobs.get_job(session, job_id)
        assert (job.error_code, job.error_message) == ("invalid_config",
                                                       "module 'x' does not exist")


# --------------------------------------------------------------------------------------------
# Queue, listing, recovery
# --------------------------------------------------------------------------------------------
def test_queue_position_counts_the_queued_jobs_ahead(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    ids = [new_job(now=T0 + timedelta(seconds=i)) for i in range(3)]
    with sessions() as session:
        assert [jobs.queue_position(session, jobs.get_job(session, i)) for i in ids] == [1, 2, 3]
    claim(sessions, ids[0])
    with sessions() as session:
        jobs.request_cancel(session, ids[1])
        positions = [jobs.queue_position(session, jobs.get_job(session, i)) for i in ids]
    assert positions == [None, None, 1]


def test_list_jobs_filters_by_status_and_labels_and_pages(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    ids = [new_job(labels={"team": "a" if i % 2 else "b", "n": str(i)},
                   now=T0 + timedelta(seconds=i)) for i in range(5)]
    claim(sessions, ids[4])
    with sessions() as session:
        page = jobs.list_jobs(session, limit=2)
        assert [j.id for j in page.jobs] == [ids[4], ids[3]] and page.next_cursor
        page2 = jobs.list_jobs(session, limit=2, cursor=page.next_cursor)
        assert [j.id for j in page2.jobs] == [ids[2], ids[1]]
        page3 = jobs.list_jobs(session, limit=2, cursor=page2.next_cursor)
        assert [j.id for j in page3.jobs] == [ids[0]] and page3.next_cursor is None
        assert [j.id for j in jobs.list_jobs(session, labels={"team": "a"}).jobs] == [
            ids[3], ids[1]]
        assert [j.id for j in jobs.list_jobs(session, labels={"team": "a", "n": "1"}).jobs] == [
            ids[1]]
        assert [j.id for j in jobs.list_jobs(session, status="running").jobs] == [ids[4]]
        queued_b = jobs.list_jobs(session, status=["queued"], labels={"team": "b"}).jobs
        assert [j.id for j in queued_b] == [ids[2], ids[0]]
        with pytest.raises(jobs.InvalidCursor):
            jobs.list_jobs(session, cursor="not-a-cursor")


def test_stale_stages_are_redispatched_once_per_period(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    dead = new_job()
    alive = new_job()
    between = new_job()
    queued = new_job()
    claim(sessions, dead, owner="dead")
    claim(sessions, alive, owner="alive")
    claim(sessions, between, owner="w")
    finish(sessions, between, "mrc", owner="w",
           outputs=StageOutputs(mrc_rows=MRC_ROWS, selected_module="fc"))
    later = T0 + timedelta(seconds=LEASE + 1)
    waiting = 600.0

    def redispatch(now: datetime) -> list[tuple[str, str]]:
        with sessions() as session:
            return sorted(jobs.stages_to_redispatch(session, stale_after=LEASE,
                                                    pending_after=waiting, now=now))

    with sessions() as session:
        assert jobs.renew_lease(session, alive, "mrc", owner="alive", lease_seconds=LEASE,
                                now=later - timedelta(seconds=2))
    assert redispatch(later) == [(dead, "mrc")]
    assert redispatch(later) == []  # re-sent once per period
    again = later + timedelta(seconds=LEASE + 1)
    assert redispatch(again) == sorted([(dead, "mrc"), (alive, "mrc")])
    # Stages nobody took (a queued job's first, a running job's next) after the long wait.
    assert redispatch(T0 + timedelta(seconds=waiting + 1)) == sorted(
        [(dead, "mrc"), (alive, "mrc"), (between, "finetune"), (queued, "mrc")])
    with sessions() as session:
        recovered = session.execute(
            select(JobEvent.job_id).where(JobEvent.kind == "stage_recovered")).scalars().all()
    assert sorted(recovered) == sorted([dead, dead, dead, alive, alive, between, queued])
