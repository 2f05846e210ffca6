"""Nothing left behind: work whose message the broker lost before any worker took it is sent
again by the workers' recovery loop (``QUEUED_RESEND_AFTER_SECONDS``, persistence/resend.py), and
the copy that comes second never makes it twice.

A lost message is played as a Redis broker restarted without persistence does it: the queue's
keys are deleted after the send (``forget_queue``), before any worker is started. Before the
shared rule, a queued materialization stayed queued for ever (only a running one's expired lease
was looked for).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs
from persistence.materializations import materializations_to_redispatch, request_materialization
from persistence.models import utcnow
from persistence.queue import RiftCelery, enqueue_materialization
from persistence.storage import ObjectStore
from rift import checkpoints
from tests.reliability.succeeded_jobs import materialization, perturbed, succeeded_job, wait_until
from tests.service_fixtures import WorkerProcess, forget_queue
from tests.worker_jobs import wait_for

pytestmark = pytest.mark.service

RESEND_S = "1"  # QUEUED_RESEND_AFTER_SECONDS of the workers: a lost message is sent within ~2 s


def _lose_queued_messages(broker_url: str, queue: str, expected: int) -> None:
    """What a Redis restarted without persistence does to the messages waiting in ``queue``."""
    assert redis.Redis.from_url(broker_url).llen(queue) == expected
    forget_queue(broker_url, queue)
    assert redis.Redis.from_url(broker_url).llen(queue) == 0


def _records(log: str) -> list[dict[str, Any]]:
    """The JSON records of a worker's log (its banner lines are not JSON)."""
    records = []
    for line in log.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def _job(sessions: sessionmaker[Session], store: ObjectStore, submit: Callable[..., str],
         quick_config: dict[str, Any], digits_checkpoint_path: Path, tmp_path: Path) -> str:
    theta_ft = perturbed(checkpoints.load_state_dict(digits_checkpoint_path))
    return succeeded_job(sessions, store, submit, copy.deepcopy(quick_config), theta_ft, tmp_path)


def test_a_materialization_whose_message_the_broker_lost_is_sent_again_and_made(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], store: ObjectStore, sender: RiftCelery,
        service_env: dict[str, str], quick_config: dict[str, Any],
        digits_checkpoint_path: Path, tmp_path: Path) -> None:
    job_id = _job(sessions, store, submit, quick_config, digits_checkpoint_path, tmp_path)
    with sessions() as session:
        row_id = request_materialization(session, job_id, 0.5, evaluate=False).row.id
    enqueue_materialization(sender, row_id)  # as the API does after its commit
    _lose_queued_messages(service_env["BROKER_URL"], service_env["CELERY_QUEUE"], 1)

    worker = start_worker(QUEUED_RESEND_AFTER_SECONDS=RESEND_S)
    wait_until(lambda: materialization(sessions, row_id).status not in ("queued", "running"),
               "the materialization's end", (worker,))
    row = materialization(sessions, row_id)
    assert (row.status, row.error_message, row.attempts) == ("succeeded", None, 1)
    assert f"materialization {row_id}: re-sending it" in worker.log()
    with sessions() as session:
        assert jobs.get_artifact(session, job_id, row.artifact_name) is not None


def test_a_re_sent_materialization_and_its_late_original_make_it_once(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], store: ObjectStore, sender: RiftCelery,
        service_env: dict[str, str], quick_config: dict[str, Any],
        digits_checkpoint_path: Path, tmp_path: Path) -> None:
    # The original was only slow (a long queue): the recovery loop sent a copy, and now both
    # wait on the queue. Two workers take one each at the same moment; the claim is one
    # conditional UPDATE, so one makes the weights and the other does nothing.
    job_id = _job(sessions, store, submit, quick_config, digits_checkpoint_path, tmp_path)
    with sessions() as session:
        row_id = request_materialization(session, job_id, 0.5, evaluate=False).row.id
    enqueue_materialization(sender, row_id)
    with sessions() as session:  # a recovery pass, once the period has passed
        resent = materializations_to_redispatch(session, max_attempts=3, resend_after=1.0,
                                                now=utcnow() + timedelta(seconds=2))
    assert resent == [row_id]
    enqueue_materialization(sender, row_id)
    assert redis.Redis.from_url(service_env["BROKER_URL"]).llen(service_env["CELERY_QUEUE"]) == 2

    workers = (start_worker(wait=False), start_worker(wait=False))
    for worker in workers:
        worker.wait_ready()
    wait_until(lambda: materialization(sessions, row_id).status not in ("queued", "running"),
               "the materialization's end", workers)

    def outcomes() -> list[str]:  # Celery logs each task's return value (JSON log lines)
        return sorted(record["data"]["return_value"] for w in workers
                      for record in _records(w.log())
                      if record.get("data", {}).get("name") == "rift.materialize"
                      and "return_value" in record["data"])

    wait_until(lambda: len(outcomes()) == 2, "both messages handled", workers)
    assert outcomes() == ["'skipped'", "'succeeded'"]
    row = materialization(sessions, row_id)
    assert (row.status, row.attempts) == ("succeeded", 1)


def test_a_job_whose_first_message_the_broker_lost_runs(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], service_env: dict[str, str],
        quick_config: dict[str, Any]) -> None:
    job_id = submit(copy.deepcopy(quick_config))  # its first stage's message is sent...
    _lose_queued_messages(service_env["BROKER_URL"], service_env["CELERY_QUEUE"], 1)  # ...lost

    worker = start_worker(QUEUED_RESEND_AFTER_SECONDS=RESEND_S)
    job = wait_for(sessions, job_id, lambda j: j.status not in ("queued", "running"), "its end",
                   workers=(worker,))
    assert job.status == "succeeded", (job.error_code, job.error_message)
    assert f"job {job_id}: re-sending stage mrc" in worker.log()

