"""Redis restarted without persistence under a running deployment: the messages it held are gone
(a job queued behind a busy worker, here). The workers see the broker's marker key gone
(persistence/broker_loss.py) and send every waiting row again at their next recovery pass; the
job used to wait ``QUEUED_RESEND_AFTER_SECONDS`` (an hour) for its message.

A Redis server of this module's own (``RedisServer``, no persistence, restarted on its port),
never the shared one; a real Celery worker and Postgres.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from persistence.broker_loss import marker_key
from persistence.settings import Settings
from tests.reliability.helpers import RedisServer
from tests.service_fixtures import WorkerProcess
from tests.worker_jobs import wait_for

pytestmark = pytest.mark.service

#: The busy job's fine-tuning: long enough for the restart to fall inside it.
EPOCHS = 60


@pytest.fixture(scope="module")
def broker_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_broker_url(broker_server: RedisServer) -> str:
    """The service fixtures' broker: this module's Redis, which its tests restart."""
    return broker_server.url


def _wait(condition: Callable[[], bool], what: str, worker: WorkerProcess,
          timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}:\n{worker.log()[-3000:]}"
        time.sleep(0.1)


def test_a_job_queued_when_redis_restarts_empty_runs_without_waiting_the_resend_period(
        broker_server: RedisServer, start_worker: Callable[..., WorkerProcess],
        submit: Callable[..., str], sessions: sessionmaker[Session],
        service_settings: Settings, quick_config: dict[str, Any]) -> None:
    client = redis.Redis.from_url(broker_server.url)
    queue = service_settings.celery_queue
    worker = start_worker(WORKER_LEASE_SECONDS="60")  # QUEUED_RESEND_AFTER_SECONDS: 1 h
    _wait(lambda: client.exists(marker_key(service_settings)) == 1,
          "the worker's first recovery pass marks the broker", worker)
    busy = copy.deepcopy(quick_config)
    busy["finetune"].update(epochs=EPOCHS, lr_milestones=[EPOCHS // 2])
    first = submit(busy)
    wait_for(sessions, first, lambda j: j.status == "running", "the first job running",
             workers=(worker,))
    second = submit(copy.deepcopy(quick_config))
    assert client.llen(queue) == 1  # behind the busy worker (prefetch 1)

    client.close()
    broker_server.stop()
    broker_server.start()  # the same port, nothing kept
    assert redis.Redis.from_url(broker_server.url).llen(queue) == 0

    job = wait_for(sessions, second, lambda j: j.is_finished, "the second job's end",
                   timeout=180, workers=(worker,))
    assert job.status == "succeeded", job.error_message
    assert "the broker (BROKER_URL) lost its messages" in worker.log()
    done = wait_for(sessions, first, lambda j: j.is_finished, "the first job's end",
                    workers=(worker,))
    assert done.status == "succeeded", done.error_message
