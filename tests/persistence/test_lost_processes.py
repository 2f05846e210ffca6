"""The work of a pool child known dead, released at once (persistence/lost_processes.py), on
SQLite and Postgres schemas built by the migrations."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs, materializations, stage_shards, workers
from persistence.lost_processes import release_dead_process
from persistence.models import Materialization, Worker
from persistence.stage_shards import CANDIDATES
from persistence.stages import ClaimOutcome, StageOutputs
from tests.persistence.helpers import LEASE, MRC_ROWS, T0, claim, finish, stage_row

pytestmark = pytest.mark.service

DEAD = "host_1:12:aa"  # '_' would match any character in a LIKE pattern left unescaped
ALIVE = ("host_1:123:bb", "hostx1:12:cc")


def test_only_the_dead_processes_leases_and_row_are_released(
        sessions: sessionmaker[Session], new_job: Callable[..., str]) -> None:
    later = T0 + timedelta(seconds=1)
    staged, other = new_job(), new_job()
    assert claim(sessions, staged, owner=DEAD).outcome == ClaimOutcome.CLAIMED
    assert claim(sessions, other, owner=ALIVE[0]).outcome == ClaimOutcome.CLAIMED
    swept = new_job()
    claim(sessions, swept, owner="w0")
    finish(sessions, swept, "mrc", owner="w0", outputs=StageOutputs(mrc_rows=MRC_ROWS))
    claim(sessions, swept, "finetune", owner="w0")
    with sessions() as session:
        stage_shards.start_candidates(session, swept, owner="w0",
                                      candidates=[("fc", 0.01), ("fc", 0.1)], now=T0)
        for index, owner in ((0, DEAD), (1, ALIVE[1])):
            assert stage_shards.claim_part(session, CANDIDATES, swept, index, owner=owner,
                                           lease_seconds=LEASE, max_attempts=3,
                                           now=T0).outcome == ClaimOutcome.CLAIMED
    done = new_job()
    for stage in ("mrc", "finetune", "interpolate"):
        claim(sessions, done, stage)
        finish(sessions, done, stage)
    with sessions() as session:
        made = materializations.request_materialization(session, done, 0.5, evaluate=False)
        assert materializations.start_materialization(
            session, made.row.id, owner=DEAD, lease_seconds=LEASE, max_attempts=3,
            now=T0) is not None
        for worker_id in (DEAD, *ALIVE):
            workers.register_worker(session, workers.WorkerInfo(
                id=worker_id, hostname="host_1", queues=["rift"], devices={"cpu": 1},
                device_override=None, started_at=T0), now=T0)

    with sessions() as session:
        released = release_dead_process(session, "host_1:12:", now=later)
    assert released.stages == [(staged, "mrc")]
    assert (released.shards, released.candidates) == ([], [(swept, 0)])
    assert released.materializations == [made.row.id]
    assert released.workers == [DEAD]
    # Expired now, so the next claim takes them over (and counts its attempt); the others held.
    assert stage_row(sessions, staged, "mrc").lease_expires_at == later
    assert stage_row(sessions, other, "mrc").lease_owner == ALIVE[0]
    assert stage_row(sessions, other, "mrc").lease_expires_at > later
    assert claim(sessions, staged, owner="w2", now=later + timedelta(seconds=1)).attempt == 2
    with sessions() as session:
        parts = stage_shards.list_candidates(session, swept)
        assert parts[0].lease_expires_at == later and parts[1].lease_expires_at > later
        assert session.get_one(Materialization, made.row.id).lease_expires_at == later
        assert sorted(w.id for w in session.query(Worker)) == sorted(ALIVE)
        kinds = {job_id: [(e.kind, e.payload) for e in jobs.list_events(session, job_id)]
                 for job_id in (staged, swept)}
    assert ("stage_recovered", {"stage": "mrc", "reason": "worker_process_lost"}) in kinds[staged]
    assert ("candidate_recovered", {"stage": "finetune", "candidate": 0,
                                    "reason": "worker_process_lost"}) in kinds[swept]
