"""What a worker reports when its stage or part ends with a job another ended: the recovery loop
failed it past its time limit while the worker was late to its own check, its cancellation was
met at a candidate's finish, or it was deleted while a part stopped. Real database, store and
library run, in process (worker/tasks.py, worker/candidates.py, worker/runtime.py)."""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs, stage_shards, stages, time_limits
from persistence.models import Job, utcnow
from persistence.queue import RiftCelery
from persistence.settings import Settings
from persistence.stage_shards import MRC_SHARDS
from persistence.stages import ClaimOutcome, StageOutputs
from rift.errors import JobCancelled
from tests.persistence.helpers import MRC_ROWS, stage_row
from tests.sweep_configs import alpha_zero_loser
from worker import candidates
from worker.candidates import execute_candidate
from worker.metrics import WorkerMetrics
from worker.runtime import PartReporter, StageReporter, WorkerResources, settle_part_error
from worker.tasks import _fail, execute_stage

pytestmark = pytest.mark.service


def _events(sessions: sessionmaker[Session], job_id: str) -> list[str]:
    with sessions() as session:
        return [e.kind for e in jobs.list_events(session, job_id, limit=10_000)]


def _fail_overdue(sessions: sessionmaker[Session], job_id: str) -> None:
    """The recovery loop's pass, its job past limit and grace (a worker late to its check)."""
    with sessions() as session:
        assert time_limits.fail_overdue_jobs(session, limit_seconds=1, grace_seconds=1,
                                             now=utcnow() + timedelta(hours=1)) == [job_id]


def _stage_durations(metrics: WorkerMetrics) -> dict[tuple[str, str], float]:
    return {(sample.labels["stage"], sample.labels["outcome"]): sample.value
            for family in text_string_to_metric_families(
                generate_latest(metrics.registry).decode())
            for sample in family.samples
            if sample.name == "rift_stage_duration_seconds_count"}


def test_a_stage_whose_job_the_recovery_loop_failed_counts_the_job_as_ended_by_it(
        submit: Callable[..., str], sessions: sessionmaker[Session], sender: RiftCelery,
        service_settings: Settings, quick_config: dict[str, Any],
        caplog: pytest.LogCaptureFixture) -> None:
    """The stage's reports read the failed job as ended (as a cancellation), or its heartbeat
    finds its lease cleared with the job's end: before, the worker logged ``cancelled during
    stage`` and counted ``outcome="cancelled"``, or warned of a lease lost to another worker
    and counted ``lease_lost``."""
    spec = copy.deepcopy(quick_config)
    spec["mrc"].update(steps=1000, num_examples=256, batch_size=32)  # long: stopped midway
    job_id = submit(spec, send=False)
    resources = WorkerResources(service_settings.model_copy(
        update={"progress_interval_seconds": 0.05}))
    resources.metrics = WorkerMetrics(resources, lambda queue: 0)

    def fail_once_claimed() -> None:
        deadline = time.monotonic() + 60
        while stage_row(sessions, job_id, "mrc").status != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        _fail_overdue(sessions, job_id)

    recovery = threading.Thread(target=fail_once_claimed)
    recovery.start()
    with caplog.at_level(logging.INFO, logger="worker"):
        outcome = execute_stage(sender, resources, job_id, "mrc")
    recovery.join()
    assert outcome == "job_ended"
    assert _stage_durations(resources.metrics) == {("mrc", "job_ended"): 1.0}
    assert "cancelled during stage" not in caplog.text
    assert "the job had already ended" in caplog.text
    with sessions() as session:
        job = jobs.get_job(session, job_id)
    assert (job.status, job.error_code) == ("failed", "timeout")
    kinds = _events(sessions, job_id)
    assert kinds.count("job_failed") == 1 and "job_cancelled" not in kinds


def test_a_late_workers_own_timeout_is_not_logged_as_its_failure(
        submit: Callable[..., str], sessions: sessionmaker[Session],
        service_settings: Settings, quick_config: dict[str, Any],
        caplog: pytest.LogCaptureFixture) -> None:
    """The worker's own time-limit check fires after the recovery loop failed the job: its
    ``fail_job`` writes nothing; before, it logged ``failed in stage mrc: timeout`` and
    returned (and counted) ``failed``."""
    job_id = submit(quick_config, send=False)
    resources = WorkerResources(service_settings)
    with sessions() as session:
        stages.claim_stage(session, job_id, "mrc", owner=resources.worker_id,
                           lease_seconds=600, max_attempts=3)
    _fail_overdue(sessions, job_id)
    with caplog.at_level(logging.INFO, logger="worker"):
        assert _fail(StageReporter(resources, job_id, "mrc"), 1, "timeout",
                     "past its limit") == "job_ended"
    assert "failed in stage" not in caplog.text
    assert _events(sessions, job_id).count("job_failed") == 1


def test_a_part_stopping_as_its_job_is_deleted_ends_quietly(
        submit: Callable[..., str], sessions: sessionmaker[Session],
        service_settings: Settings, quick_config: dict[str, Any],
        caplog: pytest.LogCaptureFixture) -> None:
    """Before, ``stop_cancelled_part`` raised ``JobNotFound`` out of the task (an error in the
    worker's log)."""
    job_id = submit(quick_config, send=False)
    resources = WorkerResources(service_settings)
    owner = resources.worker_id
    with sessions() as session:
        stages.claim_stage(session, job_id, "mrc", owner=owner, lease_seconds=600,
                           max_attempts=3)
        stage_shards.start_shards(session, job_id, owner=owner, groups=[["fc"], ["conv"]],
                                  inputs_key="unused")
        assert stage_shards.claim_part(session, MRC_SHARDS, job_id, 0, owner=owner,
                                       lease_seconds=600, max_attempts=3
                                       ).outcome == ClaimOutcome.CLAIMED
        session.execute(delete(Job).where(Job.id == job_id))
        session.commit()
    with caplog.at_level(logging.INFO, logger="worker"):
        assert settle_part_error(PartReporter(resources, job_id, MRC_SHARDS, 0), MRC_SHARDS,
                                 job_id, 0, 1,
                                 JobCancelled("the job was cancelled")) == "job_ended"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_candidate_whose_finish_ended_the_cancelled_job_reports_cancelled(
        submit: Callable[..., str], sessions: sessionmaker[Session], sender: RiftCelery,
        service_settings: Settings, quick_config: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The cancellation is asked as the candidate's run ends, past its last poll: recording it
    ends the job (``finish_part`` returns True). Before, the task reported ``done``."""
    grid = [0.01, 0.05]
    job_id = submit(alpha_zero_loser(copy.deepcopy(quick_config), grid), send=False)
    resources = WorkerResources(service_settings)
    owner, now = resources.worker_id, utcnow()
    with sessions() as session:
        stages.claim_stage(session, job_id, "mrc", owner=owner, lease_seconds=600,
                           max_attempts=3, now=now)
        stages.finish_stage(session, job_id, "mrc", owner=owner,
                            outputs=StageOutputs(mrc_rows=MRC_ROWS), now=now)
        stages.claim_stage(session, job_id, "finetune", owner=owner, lease_seconds=600,
                           max_attempts=3, now=now)
        stage_shards.start_candidates(session, job_id, owner=owner,
                                      candidates=[("fc", lr) for lr in grid], now=now)
    run_candidate = candidates.run_candidate

    def cancelled_as_it_ends(*args: Any, **kwargs: Any) -> Any:
        ran = run_candidate(*args, **kwargs)  # the real run, then the user's cancel
        with sessions() as session:
            assert jobs.request_cancel(session, job_id).status == "running"  # held: not yet
        return ran

    monkeypatch.setattr(candidates, "run_candidate", cancelled_as_it_ends)
    run = execute_candidate(sender, resources, job_id, 0)
    assert run.outcome == "cancelled"
    with sessions() as session:
        assert jobs.get_job(session, job_id).status == "cancelled"
        # The other never ran: cancelled with the job (it read "pending" for good before).
        assert [c.status for c in stage_shards.list_candidates(session, job_id)] == [
            "done", "cancelled"]
