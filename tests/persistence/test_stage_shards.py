"""The shard extension of the stage-lease protocol (persistence/stage_shards.py) on SQLite and
Postgres schemas built by the migrations."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs, stage_shards, stages
from persistence.stage_shards import SHARDED_OWNER
from persistence.stages import ClaimOutcome, LeaseLost, StageOutputs
from tests.persistence.helpers import LEASE, MRC_ROWS, T0, claim, stage_row

pytestmark = pytest.mark.service


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
