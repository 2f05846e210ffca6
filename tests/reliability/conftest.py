"""Fixtures of the reliability tests.

- The API on real Postgres (one database per module, emptied before each test), a local object
  store, and helpers to make projects, keys and resources. The API fixtures of ``tests/api`` are
  reused (``start_api`` serves ``create_app`` on a real uvicorn server; its client sends a key of
  the project 'tests').
- The test's database, store and a sending Celery app on the service fixtures (real Postgres,
  Redis, Celery workers), and a job submitter.
"""

from __future__ import annotations

import copy
import io
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from persistence import jobs
from persistence.db import session_factory_from_settings
from persistence.models import Job
from persistence.records import create_checkpoint
from persistence.settings import Settings
from persistence.storage import ObjectStore
from tests.api.conftest import (  # noqa: F401  (fixtures)
    _empty_postgres,
    module_postgres_url,
    small_cnn_file,
    start_api,
)
from tests.api.helpers import MIB, Api, RecordingDispatcher, digits_config, make_key
from tests.service_fixtures import WorkerProcess, settings_from_env
from worker.factory import RiftCelery, create_celery_app, enqueue_stage

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
@pytest.fixture
def sessions(service_settings: Settings) -> Iterator[sessionmaker[Session]]:
    factory = session_factory_from_settings(service_settings)
    yield factory
    factory.kw["bind"].dispose()


@pytest.fixture
def store(service_settings: Settings) -> ObjectStore:
    return service_settings.build_object_store()


@pytest.fixture
def sender(service_settings: Settings) -> Iterator[RiftCelery]:
    """A Celery app that only sends messages (as the API does)."""
    app = create_celery_app(service_settings)
    yield app
    app.close()


@pytest.fixture
def quick_config(digits_job_config: dict[str, Any]) -> dict[str, Any]:
    """The digits job with a small budget per stage; tests stretch the stage they need long."""
    config = copy.deepcopy(digits_job_config)
    config["attack"].update(steps=3, step_size=0.05)
    config["mrc"].update(steps=2, num_examples=64, batch_size=64)
    config["finetune"].update(epochs=3, lr_milestones=[2])
    config["interpolation"].update(alpha_step=0.25)
    config["evaluation"].update(max_examples=128)
    return config


@pytest.fixture
def submit(sessions: sessionmaker[Session], store: ObjectStore, sender: RiftCelery,
           digits_checkpoint_path: Path) -> Callable[..., str]:
    """``submit(spec) -> job id``: store the checkpoint, record it and the job, send stage 1."""
    from rift import checkpoints

    state = checkpoints.load_state_dict(digits_checkpoint_path)

    def submit_job(spec: dict[str, Any], *, send: bool = True) -> str:
        stored = store.put_file(f"checkpoints/{uuid.uuid4().hex}.safetensors",
                                digits_checkpoint_path)
        with sessions() as session:
            checkpoint = create_checkpoint(
                session, filename="digits.safetensors", size=stored.size, sha256=stored.sha256,
                format="safetensors", storage_key=stored.key, num_tensors=len(state),
                num_parameters=sum(t.numel() for t in state.values()))
            job, _ = jobs.create_job(session, spec=spec, checkpoint_id=checkpoint.id)
        if send:
            enqueue_stage(sender, job.id, "mrc")
        return job.id

    return submit_job


def wait_for(sessions: sessionmaker[Session], job_id: str, condition: Callable[[Job], bool],
             what: str, timeout: float = 120.0, workers: tuple[WorkerProcess, ...] = ()) -> Job:
    """Poll the job until ``condition`` holds; fail with its state and the workers' logs."""
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as session:
            job = jobs.get_job(session, job_id)
        if condition(job):
            return job
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {w.name}\n{w.log()[-3000:]}" for w in workers)
            pytest.fail(f"job {job_id} never reached {what}: status={job.status} "
                        f"stage={job.stage} error={job.error_code} {job.error_message}\n{logs}")
        time.sleep(0.1)


def event_kinds(sessions: sessionmaker[Session], job_id: str) -> list[str]:
    with sessions() as session:
        return [e.kind for e in jobs.list_events(session, job_id, limit=100_000)]
