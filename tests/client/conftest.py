"""Fixtures of the client tests: the real API over HTTP on loopback.

- ``queued_api``: the API on a fresh SQLite database with a recording dispatcher (jobs stay
  queued: uploads, errors, listing, cancelling, waiting with a timeout; webhook messages are
  recorded, not sent), allowing webhooks to 127.0.0.1.
- ``live_service``: the API, Postgres, Redis and a real Celery worker process, started once for
  the tests of this folder; ``finished_job`` is one job run to the end on it through the client.
- ``api_key`` / ``live_api_key``: the key the client and ``riftctl`` send to ``queued_api`` /
  ``live_service``: every scope, of a project made in that service's database.
- ``cli_launcher``: what ``run_riftctl`` forks ``riftctl`` from (the torch-free launcher), or
  None with ``RIFT_TEST_FORK_API=0`` (the console script in a fresh interpreter).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from api.main import create_app
from api.validation import Validator
from persistence.db import session_factory_from_settings
from persistence.settings import Settings
from rift_client import Checkpoint, Event, Job, RetryPolicy, RiftClient
from tests.api.helpers import KIB, ApiServer, RecordingDispatcher, digits_config, make_key
from tests.client.helpers import ScriptedServer
from tests.preloaded_launcher import Launcher
from tests.service_fixtures import (
    forget_queue,
    launch_worker,
    migrated_database,
    service_environment,
    settings_from_env,
)

#: Small limits, so that an over-size upload is cheap to send.
MAX_UPLOAD_BYTES = 256 * KIB
JOB_TIMEOUT_S = 300.0
#: Fast retries for tests; the default policy waits seconds.
FAST_RETRY = RetryPolicy(max_retries=2, backoff_s=0.05, max_backoff_s=0.2)


@dataclass
class RunningApi:
    url: str
    settings: Settings
    dispatcher: RecordingDispatcher | None


def _serve(settings: Settings, validator: Validator,
           **kwargs: Any) -> tuple[ApiServer, Callable[[], None]]:
    sessions = session_factory_from_settings(settings)
    server = ApiServer(create_app(settings, session_factory=sessions, validator=validator,
                                  **kwargs)).start()

    def stop() -> None:
        server.stop()
        engine = sessions.kw["bind"]
        engine.dispose()

    return server, stop


def _all_scopes_key(settings: Settings) -> str:
    """A key with every scope, of a project 'client-tests' in ``settings``' database."""
    sessions = session_factory_from_settings(settings)
    try:
        return make_key(sessions, "client-tests", ("read", "write", "admin"))[1]
    finally:
        sessions.kw["bind"].dispose()


@pytest.fixture
def cli_launcher(optional_api_launcher: Launcher | None) -> Launcher | None:
    """The launcher ``riftctl`` runs are forked from: this checkout's ``rift_client`` imported
    once per test process (None: each run a fresh interpreter)."""
    return optional_api_launcher


@pytest.fixture
def scripted() -> Iterator[list[ScriptedServer]]:
    """The scripted servers a test starts (append them); stopped when it ends."""
    servers: list[ScriptedServer] = []
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def queued_api(sqlite_url: str, tmp_path: Path,
               shared_validator: Validator) -> Iterator[RunningApi]:
    settings = settings_from_env({
        "DATABASE_URL": sqlite_url, "BROKER_URL": "memory://", "STORE_KIND": "local",
        "STORE_ROOT": str(tmp_path / "objects"), "WORK_DIR": str(tmp_path / "work"),
        "MAX_CHECKPOINT_BYTES": str(MAX_UPLOAD_BYTES), "MAX_DATASET_BYTES": str(MAX_UPLOAD_BYTES),
        "WEBHOOK_ALLOW_LIST": "127.0.0.1"})
    dispatcher = RecordingDispatcher()
    server, stop = _serve(settings, shared_validator, dispatcher=dispatcher)
    yield RunningApi(server.url, settings, dispatcher)
    stop()


@pytest.fixture
def api_key(queued_api: RunningApi) -> str | None:
    """The key sent to ``queued_api``: one with every scope, of a project created in
    ``queued_api``'s database."""
    return _all_scopes_key(queued_api.settings)


@pytest.fixture
def rift(queued_api: RunningApi, api_key: str | None) -> Iterator[RiftClient]:
    """A client of ``queued_api``."""
    with RiftClient(queued_api.url, api_key=api_key, retry=FAST_RETRY, timeout=30) as client:
        yield client


@pytest.fixture(scope="package")
def live_service(_postgres_template: str, redis_broker_url: str,
                 tmp_path_factory: pytest.TempPathFactory,
                 shared_validator: Validator,
                 optional_worker_launcher: Launcher | None) -> Iterator[RunningApi]:
    """The whole service for the tests of this folder: Postgres, Redis, a Celery worker process, the API
    over HTTP, a local object store."""
    root = tmp_path_factory.mktemp("live-service")
    queue = f"rift-client-test-{uuid.uuid4().hex[:12]}"
    with migrated_database(_postgres_template, "rift_client") as database_url:
        env = service_environment(database_url, redis_broker_url, queue, root)
        worker = launch_worker(env, root / "worker.log", f"client-{uuid.uuid4().hex[:6]}",
                               optional_worker_launcher)
        try:
            worker.wait_ready()
            server, stop = _serve(settings_from_env(env), shared_validator)
            try:
                yield RunningApi(server.url, settings_from_env(env), None)
            finally:
                stop()
        finally:
            worker.stop()
            forget_queue(redis_broker_url, queue)


@pytest.fixture(scope="package")
def live_api_key(live_service: RunningApi) -> str | None:
    """The key sent to ``live_service``: one with every scope, of a project created in
    ``live_service``'s database."""
    return _all_scopes_key(live_service.settings)


@dataclass
class FinishedJob:
    job: Job
    checkpoint: Checkpoint
    config: dict[str, Any]
    #: The events seen live through stream_events while the job ran.
    streamed: list[Event]


@pytest.fixture(scope="package")
def finished_job(live_service: RunningApi, live_api_key: str | None,
                 digits_checkpoint_path: Path) -> FinishedJob:
    """One small job on the adversarially trained digits checkpoint, created, followed live
    (SSE) and waited for through the client: the shared subject of this module's tests."""
    config = digits_config()
    with RiftClient(live_service.url, api_key=live_api_key, retry=FAST_RETRY) as client:
        checkpoint = client.upload_checkpoint(digits_checkpoint_path)
        job = client.create_job({"config": config, "labels": {"suite": "client"}},
                                checkpoint_id=checkpoint.id)
        streamed = list(client.stream_events(job.id))
        job = client.wait(job.id, timeout=JOB_TIMEOUT_S)
    assert job.status == "succeeded", job.error
    return FinishedJob(job, checkpoint, config, streamed)
