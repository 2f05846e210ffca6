"""Fixtures of the API tests: a real uvicorn server on loopback serving ``create_app`` against a
real, migrated database (SQLite and Postgres), with a local object store in tmp_path. Each API
gets a project and a read+write key, which its client sends by default.

Tests that do not need a worker inject a :class:`RecordingDispatcher`, so jobs stay queued and the
tests can look at them; the end-to-end tests use the real Celery dispatcher and worker processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from api.main import create_app
from api.validation import Validator
from persistence.db import session_factory_from_settings
from persistence.settings import Settings
from tests.api.helpers import (
    MIB,
    Api,
    ApiServer,
    RecordingDispatcher,
    make_key,
    small_cnn_state,
)
from tests.service_fixtures import DatabasePool, _database_url, settings_from_env


@pytest.fixture(scope="module")
def module_postgres_url(_database_pool: DatabasePool) -> Iterator[str]:
    """A migrated Postgres database for one test module (emptied before each test that uses it:
    a DELETE is much cheaper than a database per test). Taken from the session's pool and given
    back to it: made ahead, and emptied for a later module or test instead of dropped (a DROP
    forces a checkpoint, which the module's last test waited for)."""
    name = _database_pool.take()
    try:
        yield _database_url(name)
    finally:
        _database_pool.give_back(name)


def _empty_postgres(url: str) -> None:
    import psycopg
    from sqlalchemy import make_url

    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    # DELETE with foreign-key triggers off (replica role), not TRUNCATE: a test leaves a few
    # rows, and TRUNCATE gives each of some 20 tables new files (0.5-0.7 s here against
    # 0.06-0.1 s); sequences restart as TRUNCATE's RESTART IDENTITY would.
    with psycopg.connect(conninfo) as connection:
        tables = [row[0] for row in connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version'")]
        sequences = [row[0] for row in connection.execute(
            "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'")]
        connection.execute("SET LOCAL session_replication_role = replica")
        for table in tables:
            connection.execute(f'DELETE FROM "{table}"')
        for sequence in sequences:
            connection.execute(f'ALTER SEQUENCE "{sequence}" RESTART')


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """An empty migrated database: SQLite (the embedded default) and Postgres (production)."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    url = str(request.getfixturevalue("module_postgres_url"))
    _empty_postgres(url)
    return url


@pytest.fixture
def api_settings(database_url: str, tmp_path: Path) -> Settings:
    """Settings with small upload limits, so that over-size uploads stay cheap to send."""
    return settings_from_env({
        "DATABASE_URL": database_url,
        "BROKER_URL": "memory://",
        "STORE_KIND": "local",
        "STORE_ROOT": str(tmp_path / "objects"),
        "WORK_DIR": str(tmp_path / "work"),
        "MAX_CHECKPOINT_BYTES": str(2 * MIB),
        "MAX_DATASET_BYTES": str(2 * MIB),
    })


@pytest.fixture
def start_api(shared_validator: Validator) -> Iterator[Callable[..., Api]]:
    """``start_api(settings, **create_app_kwargs) -> Api``: serve ``create_app`` over HTTP."""
    running: list[tuple[ApiServer, httpx.Client, Any]] = []

    def start(settings: Settings, **kwargs: Any) -> Api:
        sessions = session_factory_from_settings(settings)
        kwargs.setdefault("session_factory", sessions)
        kwargs.setdefault("validator", shared_validator)
        app = create_app(settings, **kwargs)
        server = ApiServer(app).start()
        try:
            project_id, key = make_key(sessions, "tests")
        except OperationalError:  # a test of a database that is down: no key to make
            project_id, key = "", ""
        client = httpx.Client(base_url=server.url, timeout=60,
                              headers={"Authorization": f"Bearer {key}"} if key else {})
        running.append((server, client, sessions.kw["bind"]))
        return Api(server.url, client, settings, sessions, app.state.dispatcher,
                   project_id=project_id, key=key)

    yield start
    for server, client, engine in running:
        client.close()
        server.stop()
        engine.dispose()


@pytest.fixture
def report_api(sqlite_url: str, tmp_path: Path, start_api: Callable[..., Api]) -> Api:
    """An API on SQLite whose jobs are written straight into the database by the report
    tests (nothing is queued: a recording dispatcher)."""
    settings: Settings = settings_from_env({
        "DATABASE_URL": sqlite_url, "BROKER_URL": "memory://", "STORE_KIND": "local",
        "STORE_ROOT": str(tmp_path / "objects"), "WORK_DIR": str(tmp_path / "work")})
    return start_api(settings, dispatcher=RecordingDispatcher())


@pytest.fixture
def api(api_settings: Settings, start_api: Callable[..., Api]) -> Api:
    """The API on a fresh database with a recording dispatcher (jobs stay queued)."""
    return start_api(api_settings, dispatcher=RecordingDispatcher())


@pytest.fixture
def celery_api(service_env: dict[str, str], start_api: Callable[..., Api]) -> Api:
    """The API on the service environment's database, sending jobs to its Celery queue (start
    a worker with ``start_worker``)."""
    from api.dispatch import CeleryDispatcher

    settings = settings_from_env(service_env)
    return start_api(settings, dispatcher=CeleryDispatcher(settings))


@pytest.fixture(scope="session")
def small_cnn_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid safetensors checkpoint of small_cnn for 1-channel digits (random weights)."""
    from rift.checkpoints import save_safetensors

    path = tmp_path_factory.mktemp("checkpoints") / "small_cnn.safetensors"
    save_safetensors(path, small_cnn_state())
    return path


@pytest.fixture(scope="session")
def small_cnn_torch_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights saved with torch.save, wrapped as a training script would."""
    import torch

    path = tmp_path_factory.mktemp("checkpoints") / "small_cnn.pt"
    state = {f"module.{k}": v for k, v in small_cnn_state().items()}
    torch.save({"epoch": 3, "state_dict": state}, path)
    return path
