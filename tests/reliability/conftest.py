"""Fixtures of the reliability tests.

- The API on real Postgres (one database per module, emptied before each test), a local object
  store, and helpers to make projects, keys and resources. The API fixtures of ``tests/api`` are
  reused (``start_api`` serves ``create_app`` on a real uvicorn server; its client sends a key of
  the project 'tests').
- The test's database, store and a sending Celery app on the service fixtures (real Postgres,
  Redis, Celery workers), and a job submitter.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs
from persistence.settings import Settings
from tests.api.conftest import (  # noqa: F401  (fixtures)
    _empty_postgres,
    module_postgres_url,
    small_cnn_file,
    start_api,
)
from tests.api.helpers import MIB, Api, RecordingDispatcher, digits_config, make_key
from tests.service_fixtures import settings_from_env

pytestmark = [pytest.mark.service]


@pytest.fixture
def reliability_settings(module_postgres_url: str, tmp_path: Path) -> Settings:  # noqa: F811
    _empty_postgres(module_postgres_url)
    return settings_from_env({
        "DATABASE_URL": module_postgres_url,
        "BROKER_URL": "memory://",
        "STORE_KIND": "local",
        "STORE_ROOT": str(tmp_path / "objects"),
        "WORK_DIR": str(tmp_path / "work"),
        "MAX_CHECKPOINT_BYTES": str(2 * MIB),
        "MAX_DATASET_BYTES": str(2 * MIB),
        # Webhook targets on this machine (never called: no job of these tests ends).
        "WEBHOOK_ALLOW_LIST": "127.0.0.1",
    })


@pytest.fixture
def api(reliability_settings: Settings, start_api: Callable[..., Api]) -> Api:  # noqa: F811
    """The API with a recording dispatcher (jobs stay queued); its client is project 'tests'."""
    return start_api(reliability_settings, dispatcher=RecordingDispatcher())


@pytest.fixture
def clients(api: Api) -> Iterator[Callable[..., httpx.Client]]:
    """``clients(project, scopes=("read", "write"))``: a client with a new key of ``project``."""
    made: list[httpx.Client] = []

    def make(project: str, scopes: tuple[str, ...] = ("read", "write")) -> httpx.Client:
        _, key = make_key(api.sessions, project, scopes)
        client = api.client_for(key)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def tiny_npz() -> bytes:
    """A valid 8×8 grey npz dataset of 40 examples, 10 classes."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, x=rng.integers(0, 255, (40, 8, 8, 1), dtype=np.uint8),
             y=np.arange(40) % 10)
    return buffer.getvalue()


def upload(client: httpx.Client, path: str, name: str, content: bytes) -> dict[str, Any]:
    response = client.post(path, files={"file": (name, content)})
    assert response.status_code == 201, response.text
    return dict(response.json())


def create_job(client: httpx.Client, checkpoint_id: str, **body: Any) -> httpx.Response:
    return client.post("/v1/jobs", json={"checkpoint_id": checkpoint_id,
                                         "config": body.pop("config", digits_config()), **body})
def event_kinds(sessions: sessionmaker[Session], job_id: str) -> list[str]:
    with sessions() as session:
        return [e.kind for e in jobs.list_events(session, job_id, limit=100_000)]
