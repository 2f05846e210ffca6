"""The split-stage extension of the stage-lease protocol (persistence/stage_shards.py): MRC shards
and sweep candidates, on SQLite and Postgres schemas built by the migrations."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs, stage_shards, stages, time_limits
from persistence.models import Job
from persistence.stage_shards import CANDIDATES, SHARDED_OWNER
from persistence.stages import ClaimOutcome, LeaseLost, StageOutputs
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

RESEND = 3600.0  # QUEUED_RESEND_AFTER_SECONDS


def _part(row: dict) -> dict:
    return {"rows": [row], "baseline_robust_loss": 1.0, "baseline_robust_accuracy": 40.0}


def _claim_shard(sessions: sessionmaker[Session], job_id: str, shard: int, owner: str,
                 now=T0) -> stage_shards.ShardClaim:
    with sessions() as session:
        return stage_shards.claim_shard(session, job_id, shard, owner=owner, lease_seconds=LEASE,
                                        max_attempts=3, now=now)


def _sharded_job(sessions: sessionmaker[Session], new_job: Callable[..., str]) -> str:
    job_id = new_job()
    assert claim(sessions, job_id, owner="w1").outcome == ClaimOutcome.CLAIMED
    with sessions() as session:
        stage_shards.start_shards(session, job_id, owner="w1", groups=[["conv1"], ["fc"]],
                                  inputs_key="jobs/x/mrc/attempt-1/adversarial.safetensors",
                                  now=T0)
    return job_id


def test_a_lost_shard_is_re_run_alone_while_the_other_stays_done(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = _sharded_job(sessions, new_job)
    row = stage_row(sessions, job_id, "mrc")
    assert (row.status, row.lease_owner, row.lease_expires_at) == ("running", SHARDED_OWNER, None)

    first = _claim_shard(sessions, job_id, 0, "w1")
    second = _claim_shard(sessions, job_id, 1, "w2")
    assert (first.outcome, first.modules, second.outcome) == (
        ClaimOutcome.CLAIMED, ["conv1"], ClaimOutcome.CLAIMED)
    assert _claim_shard(sessions, job_id, 1, "w3", T0 + timedelta(seconds=1)).outcome \
        == ClaimOutcome.HELD
    with sessions() as session:
        stage_shards.finish_shard(session, job_id, 0, owner="w1", result=_part(MRC_ROWS[0]),
                                  now=T0 + timedelta(seconds=5))
        assert stage_shards.completed_parts(session, job_id) is None  # shard 1 still runs

    # w2 dies: its lease expires. Only shard 1 is re-sent; the whole stage is not.
    later = T0 + timedelta(seconds=LEASE * 3)
    with sessions() as session:
        assert stage_shards.shards_to_redispatch(session, stale_after=LEASE, pending_after=3600,
                                                 now=later) == [(job_id, 1)]
        assert stages.stages_to_redispatch(session, stale_after=LEASE, pending_after=3600,
                                           now=later) == []
    assert _claim_shard(sessions, job_id, 0, "w3", later).outcome == ClaimOutcome.DONE
    retaken = _claim_shard(sessions, job_id, 1, "w3", later)
    assert (retaken.outcome, retaken.attempt) == (ClaimOutcome.CLAIMED, 2)
    with sessions() as session:
        with pytest.raises(LeaseLost):  # the dead worker's late result is refused
            stage_shards.finish_shard(session, job_id, 1, owner="w2", result=_part(MRC_ROWS[1]))
        stage_shards.finish_shard(session, job_id, 1, owner="w3", result=_part(MRC_ROWS[1]))
        shards = stage_shards.list_shards(session, job_id)
        assert [(s.status, s.attempts) for s in shards] == [("done", 1), ("done", 2)]
        parts = stage_shards.completed_parts(session, job_id)
    assert parts is not None and [p["rows"][0]["name"] for p in parts] == ["conv1", "fc"]

    outputs = StageOutputs(mrc_rows=MRC_ROWS, selected_module="fc")
    with sessions() as session:
        stages.finish_stage(session, job_id, "mrc", owner=SHARDED_OWNER, outputs=outputs)
        with pytest.raises(LeaseLost):  # a second merge is not recorded
            stages.finish_stage(session, job_id, "mrc", owner=SHARDED_OWNER, outputs=outputs)
        assert stage_shards.completed_parts(session, job_id) is None
        job = jobs.get_job(session, job_id)
        assert (job.stage, job.selected_module) == ("finetune", "fc")


def test_a_shard_whose_message_was_lost_is_sent_again_while_its_sibling_runs(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    # Before: a pending part was sent again only once its whole job had gone quiet, so a lost
    # shard waited for every sibling to end (each progress report moves the job's updated_at).
    job_id = _sharded_job(sessions, new_job)
    assert _claim_shard(sessions, job_id, 0, "w1").outcome == ClaimOutcome.CLAIMED
    late = T0 + timedelta(seconds=RESEND + 1)  # shard 1's message was lost

    def busy(now: datetime) -> None:  # w1 works on shard 0 and reports its progress
        with sessions() as session:
            assert stage_shards.renew_shard_lease(session, job_id, 0, owner="w1",
                                                  lease_seconds=LEASE, now=now)
            stages.update_progress(session, job_id, "mrc", 0.5, now=now)

    busy(late)
    with sessions() as session:
        assert stage_shards.shards_to_redispatch(session, stale_after=LEASE,
                                                 pending_after=RESEND, now=late) == [(job_id, 1)]
        assert stage_shards.shards_to_redispatch(session, stale_after=LEASE,
                                                 pending_after=RESEND, now=late) == []
    assert "shard_recovered" in event_kinds(sessions, job_id)
    assert _claim_shard(sessions, job_id, 1, "w2", late).outcome == ClaimOutcome.CLAIMED
    assert _claim_shard(sessions, job_id, 1, "w3", late).outcome == ClaimOutcome.HELD  # a copy


def test_a_waiting_part_is_sent_again_once_per_period_not_every_lease_length(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    # Before: once its job had been quiet for a lease length, a part waiting longer than the
    # period was sent again at every pass: a part behind a long queue got a copy a minute.
    job_id = _sharded_job(sessions, new_job)  # neither shard's message reached a worker

    def recover(now: datetime) -> list[tuple[str, int]]:
        with sessions() as session:
            return stage_shards.shards_to_redispatch(session, stale_after=LEASE,
                                                     pending_after=RESEND, now=now)

    late = T0 + timedelta(seconds=RESEND + 1)
    assert recover(T0 + timedelta(seconds=RESEND / 2)) == []
    assert recover(late) == [(job_id, 0), (job_id, 1)]
    assert recover(late + timedelta(seconds=LEASE * 2)) == []
    assert recover(late + timedelta(seconds=RESEND / 2)) == []
    assert recover(late + timedelta(seconds=RESEND + 1)) == [(job_id, 0), (job_id, 1)]
    # A part given back after an error waits a period from then, whenever it was made.
    released = late + timedelta(seconds=RESEND + 2)
    assert _claim_shard(sessions, job_id, 0, "w1", released).outcome == ClaimOutcome.CLAIMED
    with sessions() as session:
        stage_shards.release_part(session, stage_shards.MRC_SHARDS, job_id, 0, owner="w1",
                                  error="boom", now=released)
    assert recover(released + timedelta(seconds=LEASE * 2)) == []


def test_all_shards_done_but_no_merge_recorded_sends_one_shard_again(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = _sharded_job(sessions, new_job)
    for shard, row in enumerate(MRC_ROWS):
        assert _claim_shard(sessions, job_id, shard, "w1").outcome == ClaimOutcome.CLAIMED
        with sessions() as session:
            stage_shards.finish_shard(session, job_id, shard, owner="w1", result=_part(row),
                                      now=T0)
    with sessions() as session:
        found = stage_shards.shards_to_redispatch(session, stale_after=LEASE, pending_after=3600,
                                                  now=T0 + timedelta(seconds=LEASE * 2))
    assert found == [(job_id, 0)]


def test_two_recovery_loops_at_once_send_a_shard_again_once(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    # Every worker runs the recovery loop. Before: a pass that found the job's shard, then
    # waited for another pass marking the job, marked it again and sent the shard twice.
    if sessions.kw["bind"].dialect.name == "sqlite":
        pytest.skip("SQLite runs one writer at a time (BEGIN IMMEDIATE): no second pass waits")
    job_id = _sharded_job(sessions, new_job)
    for shard, row in enumerate(MRC_ROWS):
        assert _claim_shard(sessions, job_id, shard, "w1").outcome == ClaimOutcome.CLAIMED
        with sessions() as session:
            stage_shards.finish_shard(session, job_id, shard, owner="w1", result=_part(row),
                                      now=T0)
    later = T0 + timedelta(seconds=LEASE * 2)
    passes: list[list[tuple[str, int]]] = []

    def second_pass() -> None:
        with sessions() as session:
            passes.append(stage_shards.shards_to_redispatch(
                session, stale_after=LEASE, pending_after=3600, now=later))

    with sessions() as first, sessions() as watcher:
        # The first pass has marked the job and not committed yet.
        first.execute(update(Job).where(Job.id == job_id).values(updated_at=later))
        thread = threading.Thread(target=second_pass)
        thread.start()
        wait_until_blocked(watcher)
        first.commit()
        thread.join()
    assert passes == [[]]


def test_only_the_stage_holder_can_hand_it_to_shards(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = new_job()
    claim(sessions, job_id, owner="w1")
    with sessions() as session, pytest.raises(LeaseLost):
        stage_shards.start_shards(session, job_id, owner="w2", groups=[["fc"]], inputs_key="k")


def test_a_cancel_request_ends_a_sharded_job_and_its_shards_do_not_run(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = _sharded_job(sessions, new_job)
    with sessions() as session:
        jobs.request_cancel(session, job_id)
    assert _claim_shard(sessions, job_id, 0, "w2").outcome == ClaimOutcome.INACTIVE
    with sessions() as session:
        assert jobs.get_job(session, job_id).status == "cancelled"


# ------------------------------------------------------------------- sweep candidates


def _claim_candidate(sessions: sessionmaker[Session], job_id: str, index: int, owner: str,
                     now=T0, max_attempts: int = 3) -> stage_shards.PartClaim:
    with sessions() as session:
        return stage_shards.claim_part(session, CANDIDATES, job_id, index, owner=owner,
                                       lease_seconds=LEASE, max_attempts=max_attempts, now=now)


def _swept_job(sessions: sessionmaker[Session], new_job: Callable[..., str]) -> str:
    """A job whose MRC is done and whose fine-tune stage w1 handed to two candidates."""
    job_id = new_job()
    claim(sessions, job_id, owner="w1")
    finish(sessions, job_id, "mrc", outputs=StageOutputs(mrc_rows=MRC_ROWS))
    assert claim(sessions, job_id, "finetune", owner="w1").outcome == ClaimOutcome.CLAIMED
    with sessions() as session:
        stage_shards.start_candidates(session, job_id, owner="w1",
                                      candidates=[("fc", 0.01), ("fc", 0.1)], now=T0)
    return job_id


def test_a_lost_candidate_is_re_run_alone_and_progress_counts_candidates(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = _swept_job(sessions, new_job)
    row = stage_row(sessions, job_id, "finetune")
    assert (row.status, row.lease_owner) == ("running", SHARDED_OWNER)
    first = _claim_candidate(sessions, job_id, 0, "w1")
    second = _claim_candidate(sessions, job_id, 1, "w2")
    assert (first.outcome, second.outcome) == (ClaimOutcome.CLAIMED, ClaimOutcome.CLAIMED)
    assert (first.part.module, first.part.lr, second.part.lr) == ("fc", 0.01, 0.1)
    with sessions() as session:
        stage_shards.finish_part(session, CANDIDATES, job_id, 0, owner="w1",
                                 result={"outcome": 0}, now=T0 + timedelta(seconds=5))
        job = jobs.get_job(session, job_id)
        assert (job.stage_progress, job.progress_message) == (0.5, "1 of 2 candidates done")
        assert stage_shards.completed_results(session, CANDIDATES, job_id) is None

    # w2 dies: only candidate 1 is re-sent, not the stage, and not the MRC shards' machinery.
    later = T0 + timedelta(seconds=LEASE * 3)
    with sessions() as session:
        assert stage_shards.parts_to_redispatch(session, CANDIDATES, stale_after=LEASE,
                                                pending_after=3600, now=later) == [(job_id, 1)]
        assert stages.stages_to_redispatch(session, stale_after=LEASE, pending_after=3600,
                                           now=later) == []
        assert stage_shards.shards_to_redispatch(session, stale_after=LEASE, pending_after=3600,
                                                 now=later) == []
    assert _claim_candidate(sessions, job_id, 0, "w3", later).outcome == ClaimOutcome.DONE
    retaken = _claim_candidate(sessions, job_id, 1, "w3", later)
    assert (retaken.outcome, retaken.attempt) == (ClaimOutcome.CLAIMED, 2)
    with sessions() as session:
        with pytest.raises(LeaseLost):  # the dead worker's late result is refused
            stage_shards.finish_part(session, CANDIDATES, job_id, 1, owner="w2",
                                     result={"outcome": "late"})
        stage_shards.finish_part(session, CANDIDATES, job_id, 1, owner="w3",
                                 result={"outcome": 1})
        assert stage_shards.completed_results(session, CANDIDATES, job_id) == [
            {"outcome": 0}, {"outcome": 1}]
        assert [(c.attempts, c.status) for c in stage_shards.list_candidates(session, job_id)] \
            == [(1, "done"), (2, "done")]
        stages.finish_stage(session, job_id, "finetune", owner=SHARDED_OWNER,
                            outputs=StageOutputs(selected_module="fc"))
        assert stage_shards.completed_results(session, CANDIDATES, job_id) is None
        assert jobs.get_job(session, job_id).stage == "interpolate"


def test_a_candidate_that_keeps_failing_fails_the_job_in_the_finetune_stage(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = _swept_job(sessions, new_job)
    for attempt in range(2):
        assert _claim_candidate(sessions, job_id, 1, f"w{attempt}", max_attempts=2).outcome \
            == ClaimOutcome.CLAIMED
        with sessions() as session:
            stage_shards.release_part(session, CANDIDATES, job_id, 1, owner=f"w{attempt}",
                                      error="RuntimeError: boom")
    assert _claim_candidate(sessions, job_id, 1, "w9", max_attempts=2).outcome \
        == ClaimOutcome.EXHAUSTED
    with sessions() as session:
        job = jobs.get_job(session, job_id)
    assert (job.status, job.error_code, job.stage) == ("failed", "stage_failed_repeatedly",
                                                       "finetune")
    assert "candidate 1" in (job.error_message or "") and "boom" in (job.error_message or "")
    assert _claim_candidate(sessions, job_id, 0, "w1").outcome == ClaimOutcome.INACTIVE


def _two_running_parts(sessions: sessionmaker[Session], new_job: Callable[..., str], kind: str
                       ) -> tuple[str, stage_shards.PartKind]:
    """A swept or sharded job whose two parts run, part 0 on w1 and part 1 on w2."""
    if kind == "candidates":
        job_id, part_kind = _swept_job(sessions, new_job), CANDIDATES
    else:
        job_id, part_kind = _sharded_job(sessions, new_job), stage_shards.MRC_SHARDS
    for index, owner in ((0, "w1"), (1, "w2")):
        with sessions() as session:
            assert stage_shards.claim_part(
                session, part_kind, job_id, index, owner=owner, lease_seconds=LEASE,
                max_attempts=3, now=T0).outcome == ClaimOutcome.CLAIMED
    return job_id, part_kind


@pytest.mark.parametrize("kind", ["candidates", "shards"])
def test_a_cancelled_job_ends_with_its_last_running_part_not_before(
        sessions: sessionmaker[Session], new_job: Callable[..., str], kind: str) -> None:
    """Before, a job whose stage was handed to its parts was cancelled at once (no stage held a
    lease), so it could be deleted while a part still ran and then stored its files under the
    deleted job; and the first part to stop ended it while others ran."""
    job_id, part_kind = _two_running_parts(sessions, new_job, kind)
    soon = T0 + timedelta(seconds=1)
    with sessions() as session:
        asked = jobs.request_cancel(session, job_id, now=soon)
        assert (asked.status, asked.cancel_requested) == ("running", True)
    with sessions() as session:  # the first part stops: the other still runs
        assert not stage_shards.stop_cancelled_part(session, part_kind, job_id, 0, owner="w1",
                                                    now=soon)
        assert jobs.get_job(session, job_id).status == "running"
    with sessions() as session:  # the last one ends the job
        assert stage_shards.stop_cancelled_part(session, part_kind, job_id, 1, owner="w2",
                                                now=soon)
        assert jobs.get_job(session, job_id).status == "cancelled"
        assert [p.status for p in stage_shards.list_parts(session, part_kind, job_id)] == [
            "cancelled", "cancelled"]
        assert "job_cancelled" in event_kinds(sessions, job_id)


@pytest.mark.parametrize("kind", ["candidates", "shards"])
def test_a_part_finishing_past_the_cancellation_after_its_sibling_stopped_ends_the_job(
        sessions: sessionmaker[Session], new_job: Callable[..., str], kind: str) -> None:
    """One part stops for the cancellation while the other, past its last poll, finishes: the
    stopped one is never done, so no merge or pick runs. Before, nothing ended the job, which
    stayed running with no work held (and no recovery pass finds a cancelled part)."""
    job_id, part_kind = _two_running_parts(sessions, new_job, kind)
    soon = T0 + timedelta(seconds=1)
    with sessions() as session:
        jobs.request_cancel(session, job_id, now=soon)
        assert not stage_shards.stop_cancelled_part(session, part_kind, job_id, 0, owner="w1",
                                                    now=soon)
    with sessions() as session:
        assert stage_shards.finish_part(session, part_kind, job_id, 1, owner="w2",
                                        result=_part(MRC_ROWS[0]), now=soon)
        assert jobs.get_job(session, job_id).status == "cancelled"
        assert [p.status for p in stage_shards.list_parts(session, part_kind, job_id)] == [
            "cancelled", "done"]
    assert event_kinds(sessions, job_id)[-2:] == [f"{part_kind.event}_finished", "job_cancelled"]


@pytest.mark.parametrize("kind", ["candidates", "shards"])
def test_the_last_part_handed_back_after_a_cancellation_ends_the_job(
        sessions: sessionmaker[Session], new_job: Callable[..., str], kind: str) -> None:
    """The cancellation is asked while the parts run (held: the job waits for them), and their
    workers shut down before their next poll: the last hand-back ends the job, as a stage's
    hand-back does. Before, the job stayed running with nothing running it until some worker
    took a part's message again (none while the whole pool was down)."""
    job_id, part_kind = _two_running_parts(sessions, new_job, kind)
    soon = T0 + timedelta(seconds=1)
    with sessions() as session:
        jobs.request_cancel(session, job_id, now=soon)
        assert not stage_shards.hand_back_part(session, part_kind, job_id, 0, owner="w1",
                                               now=soon)
        assert jobs.get_job(session, job_id).status == "running"  # part 1 still runs
    with sessions() as session:
        assert stage_shards.hand_back_part(session, part_kind, job_id, 1, owner="w2", now=soon)
        assert jobs.get_job(session, job_id).status == "cancelled"
    assert event_kinds(sessions, job_id)[-1] == "job_cancelled"


def test_a_part_handed_back_by_a_stopping_worker_waits_uncounted(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = _swept_job(sessions, new_job)
    for turn in range(4):  # more than MAX_STAGE_ATTEMPTS: never failed for it
        got = _claim_candidate(sessions, job_id, 1, f"w{turn}")
        assert (got.outcome, got.attempt) == (ClaimOutcome.CLAIMED, 1)
        with pytest.raises(LeaseLost), sessions() as session:
            stage_shards.hand_back_part(session, CANDIDATES, job_id, 1, owner="someone-else")
        with sessions() as session:
            stage_shards.hand_back_part(session, CANDIDATES, job_id, 1, owner=f"w{turn}",
                                        now=T0)
        with sessions() as session:
            part = stage_shards.list_candidates(session, job_id)[1]
        assert (part.status, part.attempts, part.lease_owner) == ("pending", 0, None)
    with sessions() as session:
        job = jobs.get_job(session, job_id)
        handed = [e.payload for e in jobs.list_events(session, job_id)
                  if e.kind == "stage_handed_back"]
    assert (job.status, job.error_code) == ("running", None)
    assert [(p["stage"], p["candidate"], p["attempt"]) for p in handed] == [
        ("finetune", 1, 1)] * 4


@pytest.mark.parametrize("kind", ["candidates", "shards"])
def test_a_failed_part_fails_the_job_with_its_last_running_sibling_not_before(
        sessions: sessionmaker[Session], new_job: Callable[..., str], kind: str) -> None:
    """Before, the first part to fail failed the job at once while its sibling still ran: a
    DELETE was accepted then, and the sibling stored its θ_FT or rows under the deleted job."""
    job_id, part_kind = _two_running_parts(sessions, new_job, kind)
    soon = T0 + timedelta(seconds=1)
    with sessions() as session:
        assert not stage_shards.fail_part(session, part_kind, job_id, 0, owner="w1",
                                          code="numerical_error", message="loss is NaN",
                                          now=soon)
        job = jobs.get_job(session, job_id)
        # The window: running, asked to stop, the error already shown.
        assert (job.status, job.cancel_requested, job.error_code, job.finished_at) == (
            "running", True, "numerical_error", None)
    with sessions() as session:  # a later failure (the sibling's time limit) does not replace it
        assert not stages.fail_job(session, job_id, "timeout", "too long", now=soon).is_finished
    with sessions() as session:  # the sibling stops as for a cancellation and ends the job
        assert stage_shards.stop_cancelled_part(session, part_kind, job_id, 1, owner="w2",
                                                now=soon)
        job = jobs.get_job(session, job_id)
        assert (job.status, job.error_code, job.error_message, job.stage) == (
            "failed", "numerical_error", "loss is NaN", part_kind.stage.value)
        assert [(p.status, p.lease_owner, p.last_error) for p in stage_shards.list_parts(
            session, part_kind, job_id)] == [("failed", None, "loss is NaN"),
                                             ("cancelled", None, None)]
    kinds = event_kinds(sessions, job_id)
    assert kinds.count("failure_pending") == 1 and kinds.count("job_failed") == 1
    assert "job_cancelled" not in kinds


@pytest.mark.parametrize("kind", ["candidates", "shards"])
def test_a_pending_failures_field_is_kept_on_the_job_and_in_its_final_job_failed_event(
        sessions: sessionmaker[Session], new_job: Callable[..., str], kind: str) -> None:
    """The setting a part's library error blames (``RiftError.field``): before, only the
    ``failure_pending`` event had it; the job row kept code and message only, and the
    ``job_failed`` written as the last sibling stopped had no ``field``. A later failure (the
    time limit's) replaces neither the field nor the code."""
    job_id, part_kind = _two_running_parts(sessions, new_job, kind)
    soon = T0 + timedelta(seconds=1)
    with sessions() as session:
        stage_shards.fail_part(session, part_kind, job_id, 0, owner="w1", code="invalid_config",
                               message="the data lies outside attack.domain", now=soon,
                               field="attack.domain")
        assert jobs.get_job(session, job_id).error_field == "attack.domain"
        stages.fail_job(session, job_id, "timeout", "too long", now=soon)
    with sessions() as session:
        assert stage_shards.stop_cancelled_part(session, part_kind, job_id, 1, owner="w2",
                                                now=soon)
        job = jobs.get_job(session, job_id)
        assert (job.status, job.error_code, job.error_field) == (
            "failed", "invalid_config", "attack.domain")
        listed = jobs.list_jobs(session, limit=10).jobs
        payloads = {e.kind: e.payload for e in jobs.list_events(session, job_id, limit=100)}
    assert [j.error_field for j in listed if j.id == job_id] == ["attack.domain"]
    assert payloads["failure_pending"]["field"] == "attack.domain"
    assert payloads["job_failed"]["field"] == "attack.domain", payloads["job_failed"]


@pytest.mark.parametrize("kind", ["candidates", "shards"])
def test_a_pending_failure_ends_the_job_once_its_siblings_lease_expired(
        sessions: sessionmaker[Session], new_job: Callable[..., str], kind: str) -> None:
    """The sibling's worker died: its re-sent message's claim ends the job with the failure
    (not cancelled), as a user's cancel request then does too."""
    job_id, part_kind = _two_running_parts(sessions, new_job, kind)
    with sessions() as session:
        stage_shards.fail_part(session, part_kind, job_id, 1, owner="w2", code="missing_object",
                               message="gone", now=T0)
    later = T0 + timedelta(seconds=LEASE * 3)
    with sessions() as session:
        assert stage_shards.claim_part(session, part_kind, job_id, 0, owner="w3",
                                       lease_seconds=LEASE, max_attempts=3,
                                       now=later).outcome == ClaimOutcome.INACTIVE
        job = jobs.get_job(session, job_id)
    assert (job.status, job.error_code) == ("failed", "missing_object")


def test_the_recovery_loops_timeout_waits_for_running_parts_then_forces(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    """The time-limit path behaves as a part's failure: pending while a part runs (and asked to
    stop); a part that never stops (hung, its lease renewed) does not keep the job for ever."""
    job_id, part_kind = _two_running_parts(sessions, new_job, "candidates")
    with sessions() as session:
        session.execute(update(Job).where(Job.id == job_id).values(started_at=T0))
        session.commit()
    grace = LEASE
    past = T0 + timedelta(seconds=10 + grace + 1)
    for index, owner in ((0, "w1"), (1, "w2")):  # both heartbeats renewed their leases
        with sessions() as session:
            assert stage_shards.renew_part_lease(session, part_kind, job_id, index, owner=owner,
                                                 lease_seconds=LEASE, now=past)
    with sessions() as session:
        assert time_limits.fail_overdue_jobs(session, limit_seconds=10, grace_seconds=grace,
                                             now=past) == [job_id]
        job = jobs.get_job(session, job_id)
        assert (job.status, job.cancel_requested, job.error_code) == ("running", True, "timeout")
        assert stage_shards.stop_cancelled_part(session, part_kind, job_id, 0, owner="w1",
                                                now=past) is False
    hung = past + timedelta(seconds=grace)
    with sessions() as session:
        assert stage_shards.renew_part_lease(session, part_kind, job_id, 1, owner="w2",
                                             lease_seconds=LEASE, now=hung)
        assert time_limits.fail_overdue_jobs(session, limit_seconds=10, grace_seconds=grace,
                                             now=hung) == [job_id]
        job = jobs.get_job(session, job_id)
    assert (job.status, job.error_code) == ("failed", "timeout")


@pytest.mark.parametrize("kind", ["candidates", "shards"])
def test_a_pending_failure_ends_the_job_failed_when_the_last_part_finishes_or_is_handed_back(
        sessions: sessionmaker[Session], new_job: Callable[..., str], kind: str) -> None:
    """The last running part past its last poll finishes (or its worker shuts down and hands it
    back) after a sibling failed: the job ends with the sibling's failure, not cancelled."""
    for last in ("finish", "hand_back"):
        job_id, part_kind = _two_running_parts(sessions, new_job, kind)
        soon = T0 + timedelta(seconds=1)
        with sessions() as session:
            stage_shards.fail_part(session, part_kind, job_id, 0, owner="w1",
                                   code="numerical_error", message="loss is NaN", now=soon)
        with sessions() as session:
            if last == "finish":
                assert stage_shards.finish_part(session, part_kind, job_id, 1, owner="w2",
                                                result=_part(MRC_ROWS[0]), now=soon)
            else:
                assert stage_shards.hand_back_part(session, part_kind, job_id, 1, owner="w2",
                                                   now=soon)
            job = jobs.get_job(session, job_id)
        assert (job.status, job.error_code) == ("failed", "numerical_error"), last
        kinds = event_kinds(sessions, job_id)
        assert kinds.count("job_failed") == 1 and "job_cancelled" not in kinds, last


@pytest.mark.parametrize("kind", ["candidates", "shards"])
@pytest.mark.parametrize("end", ["cancel", "fail"])
def test_parts_that_never_started_read_cancelled_once_their_job_ends(
        sessions: sessionmaker[Session], new_job: Callable[..., str], kind: str,
        end: str) -> None:
    """Part 0 runs, part 1 never started when the job ends (cancelled, or failed by part 0).
    Before, part 1 read ``pending`` for good: a cancelled sweep's ``GET /curves`` showed its
    candidates not started as waiting to run, though nothing sends them again."""
    if kind == "candidates":
        job_id, part_kind = _swept_job(sessions, new_job), CANDIDATES
    else:
        job_id, part_kind = _sharded_job(sessions, new_job), stage_shards.MRC_SHARDS
    with sessions() as session:
        assert stage_shards.claim_part(session, part_kind, job_id, 0, owner="w1",
                                       lease_seconds=LEASE, max_attempts=3,
                                       now=T0).outcome == ClaimOutcome.CLAIMED
    soon = T0 + timedelta(seconds=1)
    with sessions() as session:
        if end == "cancel":
            jobs.request_cancel(session, job_id, now=soon)
            assert stage_shards.stop_cancelled_part(session, part_kind, job_id, 0, owner="w1",
                                                    now=soon)
        else:
            assert stage_shards.fail_part(session, part_kind, job_id, 0, owner="w1",
                                          code="numerical_error", message="loss is NaN",
                                          now=soon)
    with sessions() as session:
        job = jobs.get_job(session, job_id)
        assert job.status == ("cancelled" if end == "cancel" else "failed")
        assert [(p.status, p.lease_owner) for p in stage_shards.list_parts(
            session, part_kind, job_id)] == [
            ("cancelled" if end == "cancel" else "failed", None), ("cancelled", None)]


def test_a_job_cancelled_before_its_parts_started_cancels_them_all(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    job_id = _swept_job(sessions, new_job)
    with sessions() as session:
        assert jobs.request_cancel(session, job_id, now=T0).status == "cancelled"
        assert [p.status for p in stage_shards.list_parts(session, CANDIDATES, job_id)] == [
            "cancelled", "cancelled"]
