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
from tests.reliability.conftest import event_kinds
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
    if whose == "service":
        worker = start_worker(JOB_TIME_LIMIT_SECONDS=str(limit))
        job_id = submit(_endless_adversarial_set(quick_config))
    else:
        worker = start_worker()
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
