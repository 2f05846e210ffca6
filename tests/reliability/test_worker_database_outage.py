"""A worker whose database cannot be reached for a moment keeps its work: the message it takes
then, and the stage it runs.

A claim is the first thing a task does; when the database refuses it (restarting, failing over,
too many connections), the task raised, Celery acknowledged the message (``acks_late``
acknowledges a failed task too), and nothing waited for the stage: its row stays ``pending``
and the recovery loop sends it again only ``QUEUED_RESEND_AFTER_SECONDS`` (1 h) later. Real
worker process, Postgres (connections to the test's database refused, as a database restarting
refuses them) and Redis. A running stage's report writes used to fail it at the first one
that met the outage (its lease, renewed by a heartbeat that retries, had slack for it).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import make_url
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs
from persistence.queue import RiftCelery, enqueue_stage
from tests.service_fixtures import WorkerProcess, _admin_connection
from tests.worker_jobs import wait_for, wait_while_progressing

pytestmark = pytest.mark.service

# Long enough that the stage is still running when the 1 s outage ends (checked below), so that
# the outage falls inside it: 160 epochs take about 3 s on a quiet 2-core machine, 15 s at a
# load of 10 (400 did before, most of the test's time).
EPOCHS = 160
#: How long the job may show no progress before the stage counts as wedged: a progress write is
#: due every 0.2 s (PROGRESS_INTERVAL_SECONDS) and an epoch takes 20–200 ms, loaded or not.
STALL_S = 30.0


@contextmanager
def database_refusing_connections(url: str) -> Iterator[None]:
    """New connections to the database of ``url`` are refused and its open ones ended, until
    the block ends."""
    name = make_url(url).database
    with _admin_connection() as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def test_a_message_taken_while_the_database_is_down_is_run_once_it_is_back(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], sender: RiftCelery, quick_config: dict[str, Any],
        postgres_url: str) -> None:
    worker = start_worker(STAGE_RETRY_DELAY_SECONDS="0.5")
    job_id = submit(quick_config, send=False)
    sessions.kw["bind"].dispose()  # the test's own pooled connections would be ended too
    with database_refusing_connections(postgres_url):
        enqueue_stage(sender, job_id, "mrc")
        # The task met the refusal and ended (raised before; sent its message again now).
        wait_for_log(worker, "Task rift.stage.mrc[", ("succeeded in", "raised unexpected"))
    job = wait_for(sessions, job_id, lambda j: j.is_finished, "the end", timeout=30,
                   workers=(worker,))
    assert job.status == "succeeded", job.error_message


def wait_for_log(worker: WorkerProcess, start: str, ends: tuple[str, ...],
                 timeout: float = 20.0) -> None:
    """Wait for a line of the worker's log that has ``start`` and one of ``ends``."""
    deadline = time.monotonic() + timeout
    while not any(start in line and any(end in line for end in ends)
                  for line in worker.log().splitlines()):
        assert time.monotonic() < deadline, f"never logged {start!r}:\n{worker.log()[-3000:]}"
        time.sleep(0.1)


def test_a_running_stage_outlives_a_database_outage_shorter_than_its_lease(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], quick_config: dict[str, Any],
        postgres_url: str) -> None:
    spec = copy.deepcopy(quick_config)
    spec["finetune"].update(epochs=EPOCHS, lr_milestones=[EPOCHS // 2])
    worker = start_worker(WORKER_LEASE_SECONDS="60")
    job_id = submit(spec)
    wait_for(sessions, job_id, lambda j: j.stage == "finetune" and j.stage_progress > 0,
             "fine-tuning", workers=(worker,))
    sessions.kw["bind"].dispose()
    with database_refusing_connections(postgres_url):
        time.sleep(1.0)  # several progress writes (every 0.2 s) fail
    back = datetime.now(UTC)
    # The fine-tuning runs on at whatever pace the machine allows (a full suite under a load
    # of 20 took it past a fixed 60 s); a stage wedged by the outage stops progressing.
    job = wait_while_progressing(sessions, job_id, lambda j: j.is_finished, "the end",
                                 stall_timeout=STALL_S, workers=(worker,))
    assert job.status == "succeeded", job.error_message
    with sessions() as session:
        stages = {s.stage: s.attempts for s in job.stages}
        events = [e.kind for e in jobs.list_events(session, job_id, limit=10_000)]
    # The stage ran on, once: no retry, and none of its reports lost.
    assert stages == {"mrc": 1, "finetune": 1, "interpolate": 1}
    assert "stage_retry" not in events
    assert events.count("epoch") == EPOCHS
    # The outage fell inside the stage: the worker ended the fine-tuning after the database was
    # back (its log's clock is this machine's).
    assert stage_done_at(worker, job_id, "finetune") > back, worker.log()[-3000:]


def stage_done_at(worker: WorkerProcess, job_id: str, stage: str) -> datetime:
    """When the worker logged the job's stage as done (its JSON log line's ``ts``)."""
    done = f"job {job_id} stage {stage} done"
    for line in worker.log().splitlines():
        if done in line:
            return datetime.fromisoformat(json.loads(line)["ts"])
    raise AssertionError(f"never logged {done!r}:\n{worker.log()[-3000:]}")


#: Epochs of the fine-tuning whose end meets the outage: enough that it is still running when
#: the outage begins (at the stage's claim), few enough that it ends inside it (1.5–15 s on a
#: quiet machine; on CI's loaded one it once took over 40 s, so the waits below do not count on
#: either: the lease outlasts any outage this test makes).
FINISHING_EPOCHS = 80
#: The worker's lease and the longest the outage is held for the fine-tuning to end.
FINISHING_LEASE_S = 300
FINISHING_WAIT_S = 240.0


def test_a_stage_finishing_during_an_outage_shorter_than_its_lease_is_recorded_once_back(
        start_worker: Callable[..., WorkerProcess], submit: Callable[..., str],
        sessions: sessionmaker[Session], quick_config: dict[str, Any],
        postgres_url: str) -> None:
    """The fine-tuning ends while the database refuses connections: its finishing transaction
    is tried again until the database is back, and the job ends then, each stage run once.
    Before, the stage's error handling met the same outage and the job waited ``running`` for
    the lease (FINISHING_LEASE_S here) to expire, and the stage ran again from its start: the
    end's wait below gives up first."""
    spec = copy.deepcopy(quick_config)
    spec["finetune"].update(epochs=FINISHING_EPOCHS, lr_milestones=[FINISHING_EPOCHS // 2])
    worker = start_worker(WORKER_LEASE_SECONDS=str(FINISHING_LEASE_S))
    job_id = submit(spec)
    wait_for(sessions, job_id, lambda j: j.stage == "finetune", "fine-tuning",
             workers=(worker,))
    sessions.kw["bind"].dispose()
    with database_refusing_connections(postgres_url):
        # Held until the fine-tuning has ended and met the outage at its finish (with the
        # change: tried again; before: its error handling raised too).
        wait_for_log(worker, f"job {job_id} stage finetune: ",
                     ("could not record its end", "unexpected error on attempt"),
                     timeout=FINISHING_WAIT_S)
        time.sleep(0.5)  # a try or two more meet the outage
    # The end's retries and the whole interpolation still to run, on a machine as loaded as
    # it may be: a generous bound (a dead worker fails the wait at once).
    job = wait_for(sessions, job_id, lambda j: j.is_finished, "the end", timeout=120,
                   workers=(worker,))
    assert job.status == "succeeded", job.error_message
    with sessions() as session:
        stages = {s.stage: s.attempts for s in job.stages}
        events = [e.kind for e in jobs.list_events(session, job_id, limit=10_000)]
    assert stages == {"mrc": 1, "finetune": 1, "interpolate": 1}
    assert "stage_retry" not in events
    assert events.count("stage_finished") == 3
    assert events.count("epoch") == FINISHING_EPOCHS  # its last reports went with its end
    assert "unexpected error" not in worker.log()


def test_the_recovery_loop_names_the_database_and_its_setting_in_an_outage(
        start_worker: Callable[..., WorkerProcess], sessions: sessionmaker[Session],
        postgres_url: str) -> None:
    """Each recovery pass (every second here) that meets the outage says, in one line, which
    dependency and setting: it logged "recovery pass failed; will retry" and SQLAlchemy's whole
    traceback every pass, which named neither."""
    worker = start_worker()
    sessions.kw["bind"].dispose()
    with database_refusing_connections(postgres_url):
        deadline = time.monotonic() + 20
        while "recovery pass: the database (DATABASE_URL) cannot be reached" not in worker.log():
            assert time.monotonic() < deadline, worker.log()[-3000:]
            time.sleep(0.1)
    assert "recovery pass failed" not in worker.log(), worker.log()[-3000:]
