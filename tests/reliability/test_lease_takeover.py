"""A worker whose stage lease was taken over stops at its next batch and writes nothing.

The takeover is made in the database, as a second worker's claim would make it after the first
stalled past its lease; the first worker is a real process that is otherwise healthy. A worker
that ignored the lost lease would go on training (more epoch events) and store its weights under
its attempt's keys, so each assertion below fails for it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs
from persistence.models import EpochMetric, JobStage, utcnow
from persistence.object_keys import epoch_state_job, job_prefix
from persistence.storage import ObjectStore
from tests.reliability.conftest import event_kinds
from tests.service_fixtures import WorkerProcess
from tests.worker_jobs import wait_for

pytestmark = pytest.mark.service

LEASE_S = 3.0  # the heartbeat renews every LEASE_S / 3


def stage_objects(store: ObjectStore, job_id: str) -> set[str]:
    """The job's objects but the fine-tune's epoch state, which every epoch replaces (an epoch
    that ended just before the lease was lost writes the bytes the new owner writes for it)."""
    return {o.key for o in store.list_objects(job_prefix(job_id))
            if epoch_state_job(o.key) is None}


def test_a_worker_that_lost_its_lease_stops_at_its_next_batch_and_records_nothing(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], store: ObjectStore,
        quick_config: dict[str, Any]) -> None:
    worker = start_worker(WORKER_LEASE_SECONDS=str(LEASE_S))
    spec = copy.deepcopy(quick_config)
    spec["finetune"].update(epochs=1000, lr_milestones=[900])  # many minutes
    job_id = submit(spec)
    wait_for(sessions, job_id,
             lambda j: j.stage == "finetune" and "epoch" in event_kinds(sessions, job_id),
             "fine-tuning", workers=(worker,))
    objects_before = stage_objects(store, job_id)
    assert not any("/finetune/" in key for key in objects_before)

    # Another worker takes the stage over (its claim: a new owner and attempt, a fresh lease).
    with sessions() as session:
        session.execute(update(JobStage)
                        .where(JobStage.job_id == job_id, JobStage.stage == "finetune")
                        .values(lease_owner="thief", attempts=JobStage.attempts + 1,
                                lease_expires_at=utcnow() + timedelta(hours=1)))
        session.commit()
    stolen = time.monotonic()

    deadline = stolen + LEASE_S + 5.0  # one heartbeat period, one batch, slack for the CPU
    while "lost the lease on stage 'finetune'" not in worker.log():
        assert time.monotonic() < deadline, f"the worker did not stop:\n{worker.log()[-3000:]}"
        time.sleep(0.1)
    assert "lease lost to another worker" in worker.log()  # noticed by the heartbeat
    epochs_at_stop = event_kinds(sessions, job_id).count("epoch")
    time.sleep(2.0)  # several epochs' worth of time
    assert event_kinds(sessions, job_id).count("epoch") == epochs_at_stop, "it kept training"

    # Nothing written: no object under the job beyond what existed, no rows, the thief's lease.
    assert stage_objects(store, job_id) == objects_before
    with sessions() as session:
        assert session.execute(select(EpochMetric).where(EpochMetric.job_id == job_id)).first() \
            is None
        job = jobs.get_job(session, job_id)
    stage = {s.stage: s for s in job.stages}["finetune"]
    assert (job.status, stage.status, stage.lease_owner) == ("running", "running", "thief")
    assert job.error_code is None
    assert worker.process.poll() is None  # the worker process itself is fine
