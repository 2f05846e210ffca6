"""POST /v1/jobs while the real broker is down (a Redis server this test stops and restarts).

The behaviour chosen: the API answers 503 ``broker_unavailable`` within a few seconds and records
nothing, so the job cannot be half-created; the client retries with the same Idempotency-Key once
the broker is back, and that retry creates the job and puts its message on the queue.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from api.errors import UNAVAILABLE_RETRY_AFTER_S
from api.main import create_app
from persistence.db import session_factory_from_settings
from persistence.models import Job
from tests.api.helpers import Api, ApiServer, digits_config, error_of, make_key, upload_checkpoint
from tests.reliability.helpers import RedisServer
from tests.service_fixtures import settings_from_env

pytestmark = pytest.mark.service


@pytest.fixture
def broker() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def test_a_job_submitted_while_the_broker_is_down_is_refused_promptly_and_lost_nowhere(
        broker: RedisServer, postgres_url: str, tmp_path: Path,
        digits_checkpoint_path: Path) -> None:
    import httpx

    timeout_s = 1.0
    settings = settings_from_env({
        "DATABASE_URL": postgres_url, "BROKER_URL": broker.url, "CELERY_QUEUE": "outage",
        "STORE_KIND": "local", "STORE_ROOT": str(tmp_path / "objects"),
        "WORK_DIR": str(tmp_path / "work"),
        "BROKER_CONNECT_TIMEOUT_SECONDS": str(timeout_s)})
    sessions = session_factory_from_settings(settings)
    server = ApiServer(create_app(settings, session_factory=sessions)).start()  # real Celery
    project_id, key = make_key(sessions, "tests")
    client = httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {key}"})
    api = Api(server.url, client, settings, sessions, None, project_id=project_id, key=key)
    try:
        checkpoint = upload_checkpoint(api, digits_checkpoint_path)
        body = {"checkpoint_id": checkpoint["id"], "config": digits_config()}
        headers = {"Idempotency-Key": "outage-1"}

        broker.stop()
        started = time.monotonic()
        refused = client.post("/v1/jobs", json=body, headers=headers)
        took = time.monotonic() - started
        assert refused.status_code == 503, refused.text
        error = error_of(refused)
        assert error["code"] == "broker_unavailable" and "broker" in error["message"]
        assert refused.headers["Retry-After"] == str(UNAVAILABLE_RETRY_AFTER_S)
        assert took < 10 * timeout_s, f"POST /v1/jobs took {took:.1f} s with the broker down"
        assert api.count(Job) == 0  # nothing half-created

        broker.start()
        accepted = client.post("/v1/jobs", json=body, headers=headers)
        assert accepted.status_code == 201, accepted.text
        assert api.count(Job) == 1
        queued = redis.Redis.from_url(broker.url).llen("outage")
        assert queued == 1  # the first stage's message is on the queue
    finally:
        client.close()
        server.stop()
        sessions.kw["bind"].dispose()
