"""The stage-lease protocol (persistence/stages.py) against real SQLite and real Postgres
schemas, both built by the Alembic migrations."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs, stages
from persistence.models import Job, JobEvent, StageStatus
from persistence.stages import ArtifactRecord, ClaimOutcome, StageOutputs
from persistence.transactions import JobNotFound
from tests.persistence.helpers import (
    LEASE,
    MRC_ROWS,
    T0,
    claim,
    event_kinds,
    finish,
    stage_row,
    wait_until_blocked,
)

pytestmark = pytest.mark.service


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
            outcomes.append(stages.claim_stage(session, job_id, "mrc", owner=owner,
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
        assert not stages.renew_lease(session, job_id, "mrc", owner="dead", lease_seconds=LEASE)
        assert stages.renew_lease(session, job_id, "mrc", owner="alive", lease_seconds=LEASE,
                                  now=later)
    with pytest.raises(stages.LeaseLost):
        finish(sessions, job_id, "mrc", owner="dead", outputs=StageOutputs(mrc_rows=MRC_ROWS))
    with sessions() as session:
        assert jobs.get_mrc_rows(session, job_id) == []
    finish(sessions, job_id, "mrc", owner="alive", outputs=StageOutputs(mrc_rows=MRC_ROWS))
    with sessions() as session:
        assert [(row.module, row.passes, row.exact) for row in jobs.get_mrc_rows(
            session, job_id)] == [("conv1", 1, False), ("fc", None, None)]


def test_renewing_keeps_the_lease(sessions: sessionmaker[Session],
                                  new_job: Callable[..., str]) -> None:
    job_id = new_job()
    claim(sessions, job_id, owner="w1")
    renewed_at = T0 + timedelta(seconds=LEASE - 1)
    with sessions() as session:
        assert stages.renew_lease(session, job_id, "mrc", owner="w1", lease_seconds=LEASE,
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
        assert stages.release_stage(session, job_id, "mrc", owner="w1", error="OSError: disk") == 1
    row = stage_row(sessions, job_id, "mrc")
    assert (row.status, row.lease_owner, row.last_error) == ("pending", None, "OSError: disk")
    with sessions() as session, pytest.raises(stages.LeaseLost):
        stages.release_stage(session, job_id, "mrc", owner="w1", error="again")
    retry = claim(sessions, job_id, owner="w2", now=T0 + timedelta(seconds=1))
    assert (retry.outcome, retry.attempt) == (ClaimOutcome.CLAIMED, 2)
    assert event_kinds(sessions, job_id)[-2:] == ["stage_retry", "stage_started"]
    with sessions() as session, pytest.raises(stages.LeaseLost):
        stages.fail_job(session, job_id, "invalid_config", "bad", owner="w1")
    with sessions() as session:
        assert stages.fail_job(session, job_id, "invalid_config", "bad", owner="w2").status == (
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
    # α = 1 cut short (interpolation.curve 'selection'): no robust accuracy, only its bound.
    points = [{"alpha": a, "clean_accuracy": 80 + a, "robust_accuracy": 40 - a if a < 1 else None,
               "robust_accuracy_at_most": None if a < 1 else 39.5} for a in (0.0, 0.5, 1.0)]
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
        assert [(p.alpha, p.robust_accuracy, p.robust_accuracy_at_most)
                for p in jobs.get_interpolation_points(session, job_id)] == [
            (0, 40.0, None), (0.5, 39.5, None), (1, None, 39.5)]
        assert [a.name for a in jobs.list_artifacts(session, job_id)] == [
            "mrc.csv", "tuned.safetensors"]
        assert jobs.get_artifact(session, job_id, "mrc.csv") is not None
        assert jobs.get_artifact(session, job_id, "result.json") is None
        events = jobs.list_events(session, job_id)
    kinds = [event.kind for event in events]
    assert kinds.count("stage_started") == 3 and kinds.count("stage_finished") == 3
    assert kinds[-1] == "job_succeeded"
    assert events[kinds.index("stage_finished")].payload == {"stage": "mrc", "modules": 2}


def test_finishing_a_stage_can_claim_the_next_in_the_same_transaction(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    terms = stages.ClaimTerms("w1", LEASE, max_attempts=3)
    job_id = new_job()
    claim(sessions, job_id, "mrc")
    late = [("module_scored", {"module": "fc"}, T0)]  # a report not yet written
    with sessions() as session:
        job, taken = stages.finish_stage_and_claim_next(
            session, job_id, "mrc", owner="w1", outputs=StageOutputs(
                selected_module="fc", artifacts=[ArtifactRecord(
                    "notes.txt", "jobs/x/mrc/notes.txt", 1, "a" * 64, "text/plain")]),
            next_terms=terms, events=late, now=T0)
    assert taken is not None and (taken.outcome, taken.attempt) == (ClaimOutcome.CLAIMED, 1)
    assert (job.stage, job.selected_module, taken.job.selected_module) == ("finetune", "fc", "fc")
    row = stage_row(sessions, job_id, "finetune")
    assert (row.status, row.lease_owner, row.attempts) == ("running", "w1", 1)
    assert row.lease_expires_at == T0 + timedelta(seconds=LEASE)
    assert event_kinds(sessions, job_id) == [
        "job_created", "stage_started", "module_scored", "stage_finished", "stage_started"]
    # Another worker's message for the stage finds it held.
    assert claim(sessions, job_id, "finetune", owner="w2").outcome == ClaimOutcome.HELD

    # A cancellation requested meanwhile ends the job instead of claiming the next stage.
    with sessions() as session:
        # As requested while the stage's lease is live (request_cancel reads the clock; T0 is past).
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
        session.commit()
        job, taken = stages.finish_stage_and_claim_next(
            session, job_id, "finetune", owner="w1", next_terms=terms, now=T0,
            outputs=StageOutputs(artifacts=[ArtifactRecord(  # the same name: replaced
                "notes.txt", "jobs/x/finetune/notes.txt", 2, "b" * 64, "text/plain")]))
    assert taken is not None and taken.outcome == ClaimOutcome.INACTIVE
    assert job.status == "cancelled"
    assert stage_row(sessions, job_id, "interpolate").status == "cancelled"
    assert event_kinds(sessions, job_id)[-2:] == ["stage_finished", "job_cancelled"]
    with sessions() as session:
        assert [(a.name, a.storage_key, a.size) for a in jobs.list_artifacts(session, job_id)] == [
            ("notes.txt", "jobs/x/finetune/notes.txt", 2)]


def test_progress_is_written_only_for_the_running_stage(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    claim(sessions, job_id)
    with sessions() as session:
        stages.update_progress(session, job_id, "mrc", 0.25, "scored conv1")
        stages.update_progress(session, job_id, "finetune", 0.9, "not running")
        stages.set_job_device(session, job_id, "cpu")
        job = jobs.get_job(session, job_id)
        assert (job.stage_progress, job.progress_message, job.device) == (
            0.25, "scored conv1", "cpu")


# --------------------------------------------------------------------------------------------
# Recovery
# --------------------------------------------------------------------------------------------
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
            return sorted(stages.stages_to_redispatch(session, stale_after=LEASE,
                                                      pending_after=waiting, now=now))

    with sessions() as session:
        assert stages.renew_lease(session, alive, "mrc", owner="alive", lease_seconds=LEASE,
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


def test_a_waiting_stage_is_resent_a_period_after_its_message_not_after_the_jobs_last_change(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    # Before: a waiting stage was timed by its job's updated_at, and each re-send moved that
    # (clients saw the job change while nothing happened to it); a stage given back after an
    # error was timed from the job's last progress write, not from its new message.
    queued = new_job()
    period = 600.0

    def redispatch(now: datetime) -> list[tuple[str, str]]:
        with sessions() as session:
            return stages.stages_to_redispatch(session, stale_after=LEASE, pending_after=period,
                                               now=now)

    late = T0 + timedelta(seconds=period + 1)
    assert redispatch(late) == [(queued, "mrc")]
    assert redispatch(late) == []  # every worker runs the loop: sent once per period
    with sessions() as session:
        assert jobs.get_job(session, queued).updated_at == T0  # the job itself is unchanged
    assert stage_row(sessions, queued, "mrc").dispatched_at == late
    assert redispatch(late + timedelta(seconds=period + 1)) == [(queued, "mrc")]

    retried = new_job()
    claim(sessions, retried, owner="w")  # at T0
    given_back = T0 + timedelta(seconds=period)
    with sessions() as session:
        stages.release_stage(session, retried, "mrc", owner="w", error="boom", now=given_back)
    assert (retried, "mrc") not in redispatch(given_back + timedelta(seconds=period / 2))
    assert (retried, "mrc") in redispatch(given_back + timedelta(seconds=period + 1))


def test_two_recovery_loops_at_once_resend_a_stage_once(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    # Every worker runs the recovery loop. Before: a pass that found a stale stage, then waited
    # for another pass marking the same job, marked it again: a second stage_recovered event
    # and a second message.
    if sessions.kw["bind"].dialect.name == "sqlite":
        pytest.skip("SQLite runs one writer at a time (BEGIN IMMEDIATE): no second pass waits")
    dead = new_job()
    claim(sessions, dead, owner="dead")
    later = T0 + timedelta(seconds=LEASE + 1)
    passes: list[list[tuple[str, str]]] = []

    def second_pass() -> None:
        with sessions() as session:
            passes.append(stages.stages_to_redispatch(session, stale_after=LEASE,
                                                      pending_after=600.0, now=later))

    with sessions() as first, sessions() as watcher:
        # The first pass has marked the job and not committed yet.
        first.execute(update(Job).where(Job.id == dead).values(updated_at=later))
        thread = threading.Thread(target=second_pass)
        thread.start()
        wait_until_blocked(watcher)  # the second pass waits for the first's row
        first.commit()
        thread.join()
    assert passes == [[]]


# --------------------------------------------------------------------------------------------
# Statements per transaction (the worker runs these on every job's way: each is a round trip)
# --------------------------------------------------------------------------------------------
@contextmanager
def counted(sessions: sessionmaker[Session]) -> Iterator[list[str]]:
    """The SQL statements run on the factory's engine inside the block (BEGIN excluded), the
    same statement run again at once counted once: the rows of one INSERT, which Postgres gets
    in one statement and SQLite one row at a time."""
    seen: list[str] = []
    engine = sessions.kw["bind"]

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if not statement.lstrip().upper().startswith("BEGIN") and seen[-1:] != [statement]:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


def test_a_claim_and_each_finish_take_few_statements(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    terms = stages.ClaimTerms("w1", LEASE, max_attempts=3)
    job_id = new_job(labels={"team": "a"})
    reports = [("module_scored", {"module": m}, T0) for m in ("conv1", "fc")]
    artifacts = [ArtifactRecord(name, f"jobs/x/{name}", 1, "a" * 64, "text/plain")
                 for name in ("a.txt", "b.txt")]
    with counted(sessions) as claiming, sessions() as session:
        stages.claim_stage(session, job_id, "mrc", owner="w1", lease_seconds=LEASE,
                           max_attempts=3, now=T0)
    with counted(sessions) as chaining, sessions() as session:
        _, taken = stages.finish_stage_and_claim_next(
            session, job_id, "mrc", owner="w1", next_terms=terms, events=reports, now=T0,
            device="cpu", outputs=StageOutputs(mrc_rows=MRC_ROWS, artifacts=artifacts,
                                               selected_module="fc", metrics={"m": 1}))
    assert taken is not None and taken.outcome == ClaimOutcome.CLAIMED
    with sessions() as session:
        stages.finish_stage_and_claim_next(session, job_id, "finetune", owner="w1",
                                           next_terms=terms, outputs=StageOutputs(), now=T0)
    points = [{"alpha": a, "clean_accuracy": 80.0, "robust_accuracy": 40.0} for a in (0, 1)]
    with counted(sessions) as ending, sessions() as session:
        job, _ = stages.finish_stage_and_claim_next(
            session, job_id, "interpolate", owner="w1", events=reports, now=T0,
            outputs=StageOutputs(interpolation_points=points, artifacts=artifacts,
                                 chosen_alpha=0.5))
    assert job.status == "succeeded"
    # The claim: the job's row locked (not its labels nor stages), its stages, the claim's
    # UPDATE returning the attempt, then the job's row and the event at the commit (was 9:
    # the labels and stages loaded with the job, the stages again, the claimed row read back,
    # started_at written on its own).
    assert len(claiming) <= 5, claiming
    # Finish and claim: the job, the stage done, the artifacts already there, the stages, the
    # claim, then at the commit one INSERT per table and the job's row once (was 16).
    assert len(chaining) <= 9, chaining
    # The last finish: the same less the claim (was 10; a job of a project adds the read of
    # its webhook endpoints, as before).
    assert len(ending) <= 7, ending
    with sessions() as session:
        kinds = [(e.kind, e.payload.get("module")) for e in jobs.list_events(session, job_id)]
        assert [s.status for s in jobs.get_job(session, job_id).stages] == ["done"] * 3
    # The events in the order they were reported, each transaction's in one INSERT.
    assert kinds[:6] == [("job_created", None), ("stage_started", None),
                         ("module_scored", "conv1"), ("module_scored", "fc"),
                         ("stage_finished", None), ("stage_started", None)]
    assert [kind for kind, _ in kinds[-4:]] == [
        "module_scored", "module_scored", "stage_finished", "job_succeeded"]


def test_a_claim_says_each_stages_attempt_and_keeps_the_first_start(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    first = claim(sessions, job_id, owner="w1")
    assert dict(first.attempts) == {"mrc": 1, "finetune": 0, "interpolate": 0}
    with sessions() as session:
        stages.release_stage(session, job_id, "mrc", owner="w1", error="OSError")
    again = claim(sessions, job_id, owner="w2", now=T0 + timedelta(seconds=5))
    assert (again.attempt, dict(again.attempts)) == (2, {"mrc": 2, "finetune": 0,
                                                         "interpolate": 0})
    row = stage_row(sessions, job_id, "mrc")
    assert (row.attempts, row.started_at, row.lease_owner) == (2, T0, "w2")
    assert row.lease_expires_at == T0 + timedelta(seconds=5 + LEASE)
    finish(sessions, job_id, "mrc", owner="w2")
    following = claim(sessions, job_id, "finetune", now=T0 + timedelta(seconds=9))
    assert dict(following.attempts) == {"mrc": 2, "finetune": 1, "interpolate": 0}
    assert stage_row(sessions, job_id, "finetune").started_at == T0 + timedelta(seconds=9)
    # Not claimed: no attempts to give.
    assert dict(claim(sessions, job_id, "finetune", owner="w3").attempts) == {}


def test_a_claim_with_inputs_reads_the_checkpoint_and_dataset_in_its_transaction(
        sessions: sessionmaker[Session], new_job: Callable[..., str], checkpoint_id: str
) -> None:
    job_id = new_job()
    with counted(sessions) as seen, sessions() as session:
        taken, checkpoint, dataset = stages.claim_stage_with_inputs(
            session, job_id, "mrc", owner="w1", lease_seconds=LEASE, max_attempts=3, now=T0)
        assert not session.in_transaction()  # nothing left open for the close to roll back
    assert taken.outcome == ClaimOutcome.CLAIMED and dataset is None
    assert checkpoint is not None and checkpoint.id == checkpoint_id
    assert len(seen) <= 6, seen  # the inputs' one SELECT, the claim, its COMMIT
    with sessions() as session, pytest.raises(JobNotFound):
        stages.claim_stage_with_inputs(session, "nope", "mrc", owner="w1",
                                       lease_seconds=LEASE, max_attempts=3)


def test_a_failure_naming_a_file_that_is_not_utf8_is_stored(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    # A tar packed on a Latin-1 system names its folder b"caf\xe9", which Python reads as
    # "caf\udce9". Before: storing the library's error naming it raised UnicodeEncodeError,
    # and the job was not marked failed.
    job_id = new_job()
    claim(sessions, job_id, owner="w1")
    with sessions() as session:
        stages.fail_job(session, job_id, "invalid_dataset",
                        "cannot read image /data/caf\udce9/1.png", owner="w1")
    with sessions() as session:
        job = jobs.get_job(session, job_id)
        assert (job.status, job.error_message) == (
            "failed", "cannot read image /data/caf\\udce9/1.png")


def test_a_stage_handed_back_by_a_stopping_worker_waits_uncounted_for_another(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    # More hand-backs than MAX_STAGE_ATTEMPTS (3): a rolling deploy never fails the job.
    for turn in range(4):
        owner = f"w{turn}"
        got = claim(sessions, job_id, owner=owner, now=T0 + timedelta(seconds=turn))
        assert (got.outcome, got.attempt) == (ClaimOutcome.CLAIMED, 1)
        # Only the holder hands it back.
        with pytest.raises(stages.LeaseLost), sessions() as session:
            stages.hand_back_stage(session, job_id, "mrc", owner="someone-else")
        with sessions() as session:
            stages.hand_back_stage(session, job_id, "mrc", owner=owner,
                                   now=T0 + timedelta(seconds=turn))
        row = stage_row(sessions, job_id, "mrc")
        assert (row.status, row.attempts, row.lease_owner, row.lease_expires_at) == (
            "pending", 0, None, None)
        assert row.dispatched_at is not None  # its message is sent again now
    with sessions() as session:
        job = jobs.get_job(session, job_id)
        handed = [e.payload for e in jobs.list_events(session, job_id)
                  if e.kind == "stage_handed_back"]
    assert (job.status, job.attempts, job.error_code) == ("running", 0, None)
    assert job.progress_message == stages.HANDED_BACK_MESSAGE
    assert [(p["stage"], p["attempt"], p["worker"], p["reason"]) for p in handed] == [
        ("mrc", 1, f"w{turn}", "worker_shutdown") for turn in range(4)]
    # Not while the job has ended (cancelled meanwhile: the claim's holder writes nothing).
    claim(sessions, job_id, owner="w9")
    with sessions() as session:
        # Its lease (claimed at T0) expired: nothing holds work, so the request ends the job.
        assert jobs.request_cancel(session, job_id).status == "cancelled"
    with pytest.raises(stages.JobEnded), sessions() as session:
        stages.mark_cancelled(session, job_id)  # a late worker's cancel: the end was not its
    with pytest.raises(stages.LeaseLost), sessions() as session:
        stages.hand_back_stage(session, job_id, "mrc", owner="w9")


def test_a_failure_message_holding_nul_is_stored_on_both_databases(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    # Postgres refuses NUL in text and JSON (SQLite stores it): before, a library error quoting
    # a name read from an upload ("key 'a\x00b'") could not be written there, so the job was
    # not marked failed on Postgres, as it was on SQLite.
    job_id = new_job()
    claim(sessions, job_id, owner="w1")
    with sessions() as session:
        stages.fail_job(session, job_id, "invalid_checkpoint", "no weights under 'a\x00b'",
                        owner="w1")
    with sessions() as session:
        job = jobs.get_job(session, job_id)
        assert (job.status, job.error_message) == ("failed", "no weights under 'a\\x00b'")
        assert jobs.list_events(session, job_id)[-1].payload["message"] == job.error_message


def test_a_stage_handed_back_after_its_cancellation_was_asked_for_ends_the_job_cancelled(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    # The user cancels while the stage runs (the flag set, the lease live), then SIGTERM comes
    # before the stage's next read of the flag: handed back, the job stayed "running", "waiting
    # for another worker", until some worker took the message — never, with all workers gone.
    job_id = new_job()
    claim(sessions, job_id, owner="w1")
    with sessions() as session:
        assert jobs.request_cancel(session, job_id, now=T0).status == "running"
    with sessions() as session:
        cancelled = stages.hand_back_stage(session, job_id, "mrc", owner="w1",
                                           now=T0 + timedelta(seconds=1))
    with sessions() as session:
        job = jobs.get_job(session, job_id)
        assert job.status == "cancelled"
        assert cancelled is True
        assert [s.status for s in job.stages] == ["cancelled"] * 3
        kinds = [e.kind for e in jobs.list_events(session, job_id)]
    assert kinds[-2:] == ["stage_handed_back", "job_cancelled"]
    # Without a cancellation the hand-back says so.
    other = new_job()
    claim(sessions, other, owner="w1")
    with sessions() as session:
        assert stages.hand_back_stage(session, other, "mrc", owner="w1",
                                      now=T0 + timedelta(seconds=1)) is False


def test_a_running_stages_reports_are_not_written_once_its_job_has_ended(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    # The recovery loop fails a job past its time limit while its worker still runs the stage:
    # that worker's next reports must not follow the job's job_failed.
    job_id = new_job()
    claim(sessions, job_id, owner="w1")
    with sessions() as session:
        assert stages.report_activity(session, job_id, "mrc", events=[("epoch", {"i": 1}, T0)],
                                      progress=(0.5, "half")) is False
        stages.fail_job(session, job_id, "timeout", "past its limit")
    with sessions() as session:
        assert stages.report_activity(session, job_id, "mrc", events=[("epoch", {"i": 2}, T0)],
                                      progress=(0.75, "more"), device="cpu") is True
    with sessions() as session:
        job = jobs.get_job(session, job_id)
    assert event_kinds(sessions, job_id)[-2:] == ["epoch", "job_failed"]
    assert (job.stage_progress, job.progress_message, job.device) == (0.5, "half", None)


def test_a_hand_back_writes_the_attempts_last_reports_which_the_next_attempt_reads_back(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    # The rows a stopped MRC attempt scored since its last write go with the hand-back (before,
    # the reporter dropped them), and stored_events gives the next attempt those of its kind and
    # inputs digest, in order.
    job_id = new_job()
    claim(sessions, job_id, owner="w1")
    row = {"name": "conv1", "mrc": 0.25, "max_ascent_loss": 1.0000000000000002, "passes": 2}
    with sessions() as session:
        stages.report_activity(session, job_id, "mrc", events=[
            ("module_scored", {**row, "inputs": "a"}, T0),
            ("module_scored", {**row, "name": "conv0", "inputs": "b"}, T0)])
    with sessions() as session:
        stages.hand_back_stage(session, job_id, "mrc", owner="w1", events=[
            ("module_scored", {**row, "name": "fc", "inputs": "a"}, T0),
            ("alpha_evaluated", {"alpha": 0.5, "inputs": "a"}, T0)])
    with sessions() as session:
        kinds = [e.kind for e in jobs.list_events(session, job_id)]
        assert kinds[-3:] == ["module_scored", "alpha_evaluated", "stage_handed_back"]
        stored = stages.stored_events(session, job_id, "module_scored", "a")
    assert stored == [{**row, "inputs": "a"}, {**row, "name": "fc", "inputs": "a"}]
    assert isinstance(stored[0]["max_ascent_loss"], float)  # the float back bit for bit
    with sessions() as session:
        assert stages.stored_events(session, job_id, "alpha_evaluated", "a") == [
            {"alpha": 0.5, "inputs": "a"}]
        assert stages.stored_events(session, job_id, "module_scored", "c") == []
