"""Cancellation and the per-job time limit, on real worker processes, Postgres and Redis.

Each job is stretched so that, without the check under test, it would run for many minutes; the
assertions give it a few seconds.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs, stages
from persistence.models import JobStage, utcnow
from persistence.time_limits import fail_overdue_jobs
from tests.reliability.conftest import event_kinds
from tests.reliability.test_worker_database_outage import wait_for_log
from tests.service_fixtures import WorkerProcess
from tests.worker_jobs import wait_for

pytestmark = pytest.mark.service

#: "Within a few seconds": the worker polls every PROGRESS_INTERVAL_SECONDS (0.2 s in the tests)
#: and one attack step of one example takes milliseconds; the rest is slack for a shared CPU.
PROMPT_S = 8.0


def _endless_adversarial_set(config: dict[str, Any]) -> dict[str, Any]:
    """MRC's adversarial set at 1,000 PGD steps, one example per batch: an hour on a CPU."""
    spec = copy.deepcopy(config)
    spec["attack"].update(steps=1000)
    spec["mrc"].update(num_examples=1_000_000, batch_size=1)
    # No preflight: it would attack its sample at 1,000 steps first, and this test is about the
    # adversarial set (the preflight's evaluation checks for cancellation like every loop).
    spec["preflight"] = {"examples": 0}
    return spec


def test_cancel_while_the_adversarial_set_is_made_lands_within_seconds(
        celery_worker: WorkerProcess, submit: Callable[..., str],
        sessions: sessionmaker[Session], quick_config: dict[str, Any]) -> None:
    job_id = submit(_endless_adversarial_set(quick_config))
    wait_for(sessions, job_id, lambda j: j.progress_message == "making the adversarial set",
             "the adversarial set", workers=(celery_worker,))
    time.sleep(1.0)  # well inside the loop, not at its first check
    with sessions() as session:
        assert jobs.request_cancel(session, job_id).cancel_requested
    asked = time.monotonic()
    job = wait_for(sessions, job_id, lambda j: j.is_finished, "the end", timeout=60,
                   workers=(celery_worker,))
    took = time.monotonic() - asked
    print(f"cancel during the adversarial set took {took:.2f} s")  # quoted in HANDOFF.md
    assert job.status == "cancelled"
    assert took < PROMPT_S, f"the cancel took {took:.1f} s"
    assert "module_scored" not in event_kinds(sessions, job_id)


@pytest.mark.parametrize("whose", ["service", "job"])
def test_a_job_past_its_time_limit_fails_with_code_timeout(
        whose: str, start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], quick_config: dict[str, Any]) -> None:
    limit = 3.0
    # The service's JOB_TIME_LIMIT_SECONDS, or the job's own time_limit_seconds under the
    # service's default of hours.
    # The recovery loop fails a job a lease length past its limit (a worker that died or hung);
    # under a load of 20 it won the race at the default 4 s (the worker had not yet reached a
    # check: building the run is none), and the job ended as it should but by the other party.
    # A lease far beyond the assertions leaves this test to the worker's own check.
    lease = "60"
    if whose == "service":
        worker = start_worker(JOB_TIME_LIMIT_SECONDS=str(limit), WORKER_LEASE_SECONDS=lease)
        job_id = submit(_endless_adversarial_set(quick_config))
    else:
        worker = start_worker(WORKER_LEASE_SECONDS=lease)
        job_id = submit(_endless_adversarial_set(quick_config), time_limit_seconds=limit)
    job = wait_for(sessions, job_id, lambda j: j.is_finished, "the end", timeout=60,
                   workers=(worker,))
    assert (job.status, job.error_code) == ("failed", "timeout"), job.error_message
    knob = "JOB_TIME_LIMIT_SECONDS" if whose == "service" else "the job's time_limit_seconds"
    assert f"limit of 3 s ({knob})" in (job.error_message or "")
    assert job.started_at is not None and job.finished_at is not None
    ran = (job.finished_at - job.started_at).total_seconds()
    assert limit <= ran < limit + PROMPT_S
    assert {s.stage: s.status for s in job.stages}["mrc"] == "failed"
    assert "failed in stage mrc: timeout" in worker.log()  # the worker itself stopped it
    assert "past its time limit" not in worker.log()


def test_a_job_the_recovery_loop_fails_while_its_worker_runs_gets_no_report_after_its_end(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], quick_config: dict[str, Any]) -> None:
    # The race the test above avoids: the recovery loop fails a job past its limit while its
    # live worker, late to its own check, still fine-tunes. The worker's reports (an event per
    # epoch) used to be written after the job's end, behind its job_failed; now the worker
    # writes nothing more, stops at its next check and holds no lease.
    spec = copy.deepcopy(quick_config)
    spec["finetune"].update(epochs=1000, lr_milestones=[500])  # minutes: only the end stops it
    worker = start_worker()
    job_id = submit(spec)
    wait_for(sessions, job_id, lambda j: j.stage == "finetune" and j.stage_progress > 0,
             "fine-tuning", workers=(worker,))
    with sessions() as session:
        # What the loop does for a job past limit and grace (here: any running job).
        assert fail_overdue_jobs(session, limit_seconds=0.0, grace_seconds=0.0) == [job_id]
    wait_for_log(worker, "Task rift.stage.mrc[", ("succeeded in",), timeout=PROMPT_S * 4)
    with sessions() as session:
        job = jobs.get_job(session, job_id)
        kinds = [e.kind for e in jobs.list_events(session, job_id, limit=100_000)]
    assert (job.status, job.error_code) == ("failed", "timeout")
    assert "epoch" in kinds  # it was reporting
    assert kinds[-1] == "job_failed" and kinds.count("job_failed") == 1, kinds[-5:]
    finetune = next(s for s in job.stages if s.stage == "finetune")
    assert (finetune.status, finetune.lease_owner) == ("failed", None)
    # The end is logged (and counted) as the job's, not as the worker's own cancellation,
    # failure or lost lease (tests/worker/test_ended_outcomes.py).
    log = worker.log()
    assert "succeeded in" in log and "'job_ended'" in log, log[-3000:]
    assert not any(line in log for line in ("cancelled during stage", "failed in stage",
                                            "lease lost to another worker")), log[-3000:]


@pytest.mark.parametrize("whose", ["service", "job"])
def test_the_recovery_loop_fails_a_job_whose_worker_hung_past_the_limit(
        whose: str, start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], quick_config: dict[str, Any]) -> None:
    # A worker that claimed the stage and then hung: its lease is renewed for an hour, so
    # nothing but the time limit can end the job.
    job_id = submit(quick_config, send=False,
                    time_limit_seconds=1.0 if whose == "job" else None)
    with sessions() as session:
        claim = stages.claim_stage(session, job_id, "mrc", owner="hung-worker",
                                   lease_seconds=3600, max_attempts=3)
        assert claim.outcome == "claimed"
        session.execute(update(JobStage).where(JobStage.job_id == job_id)
                        .values(lease_expires_at=utcnow() + timedelta(hours=1)))
        session.commit()
    # Grace: WORKER_LEASE_SECONDS=4. The job's own limit of 1 s, or the service's.
    worker = (start_worker(JOB_TIME_LIMIT_SECONDS="1") if whose == "service"
              else start_worker())
    job = wait_for(sessions, job_id, lambda j: j.is_finished, "the end", timeout=30,
                   workers=(worker,))
    assert (job.status, job.error_code) == ("failed", "timeout")
    assert "limit of 1 s" in (job.error_message or "")
    assert "past its time limit" in worker.log()
