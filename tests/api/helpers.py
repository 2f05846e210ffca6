"""Helpers of the API tests: a uvicorn server on loopback, a recording dispatcher, small
checkpoints and request shortcuts. Fixtures built on them live in ``conftest.py``."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.dispatch import DispatchError
from persistence.models import Checkpoint, Dataset, Job
from persistence.settings import Settings
from persistence.storage import LocalObjectStore
from tests.ports import free_port as free_port  # re-exported: the tests import it from here
from tests.ports import listening_socket
from tests.preloaded_launcher import Launcher
from tests.service_fixtures import WorkerProcess, launch_worker, settings_from_env


def varied_images(shape: tuple[int, ...], dtype: Any = np.uint8, seed: int = 0) -> np.ndarray:
    """Random images of ``shape`` (uint8 0–255, or floats in [0, 1]): uploads refuse data sets of
    constant or identical images, so fixtures that only need some valid images use these."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.random(shape).astype(dtype)

KIB = 1024
MIB = 1024 * KIB


class CountingStore(LocalObjectStore):
    """A real local store that counts the ranges read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.ranges: list[tuple[int, int | None]] = []

    def iter_range(self, key: str, start: int = 0, end: int | None = None,
                   chunk_size: int = 1 << 20) -> Iterator[bytes]:
        self.ranges.append((start, end))
        return super().iter_range(key, start, end, chunk_size)


class RecordingDispatcher:
    """Remembers the jobs it was asked to queue instead of sending them; can play a dead broker."""

    def __init__(self) -> None:
        self.enqueued: list[str] = []
        self.webhooks: list[str] = []
        self.broker_down = False

    def enqueue_job(self, job_id: str) -> None:
        if self.broker_down:
            raise DispatchError("the broker cannot be reached: connection refused (test)")
        self.enqueued.append(job_id)

    def enqueue_webhook(self, delivery_id: str) -> None:
        if self.broker_down:
            raise DispatchError("the broker cannot be reached: connection refused (test)")
        self.webhooks.append(delivery_id)

    def check(self) -> None:
        if self.broker_down:
            raise DispatchError("the broker cannot be reached: connection refused (test)")

    def enqueue_materialization(self, materialization_id: str) -> None:
        if self.broker_down:
            raise DispatchError("the broker cannot be reached: connection refused (test)")
        self.enqueued.append(materialization_id)

    def enqueue_mlflow_export(self, job_id: str, request_event_id: int) -> None:
        if self.broker_down:
            raise DispatchError("the broker cannot be reached: connection refused (test)")
        self.enqueued.append(job_id)

    def close(self) -> None:
        pass


class PromptServer(uvicorn.Server):
    """uvicorn's server that ends as soon as it is asked to (:meth:`request_exit`), for the
    tests' in-process APIs. uvicorn looks at ``should_exit`` every 0.1 s, then gives open
    connections 0.1 s before it waits for their tasks: 0.2 s at the teardown of each of the
    suite's 1,000-odd API servers, though their tests closed their clients first. Here the
    main loop also wakes when asked, and a server left with no connection nor task goes
    straight to the app's shutdown (lifespan), as uvicorn's shutdown would after its wait;
    one with any goes through uvicorn's whole shutdown."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    def request_exit(self) -> None:
        """Ask the server to exit (from any thread) and wake its main loop."""
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # its loop closed already
                loop.call_soon_threadsafe(wake.set)

    async def main_loop(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        counter = 0
        while not await self.on_tick(counter):  # uvicorn's ticks (its Date header each 10)
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.server_state.connections or self.server_state.tasks or self.force_exit:
            await super().shutdown(sockets)
            return
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        await self.lifespan.shutdown()


class ApiServer:
    """A uvicorn server running an app in a background thread, reachable over real HTTP. It
    serves a socket this process bound and is listening on already (``listening_socket``):
    a port chosen, closed and bound again later could be taken meanwhile by another process."""

    def __init__(self, app: Any) -> None:
        self.socket = listening_socket()
        self.port = int(self.socket.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self.server = PromptServer(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="uvicorn", daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.request_exit()
        self.thread.join(timeout=10)
        self.socket.close()


@dataclass
class Api:
    """A running API and what it runs on: its settings, database and dispatcher."""

    url: str
    client: httpx.Client
    settings: Settings
    sessions: sessionmaker[Session]
    dispatcher: Any
    project_id: str = ""
    key: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def client_for(self, key: str | None) -> httpx.Client:
        """Another client of this API sending ``key`` (None: no Authorization header); the
        caller closes it."""
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return httpx.Client(base_url=self.url, timeout=60, headers=headers)

    def count(self, model: type) -> int:
        """Rows in ``model``'s table."""
        with self.sessions() as session:
            return int(session.execute(select(func.count()).select_from(model)).scalar_one())

    def count_jobs(self) -> int:
        return self.count(Job)

    def stored_files(self) -> list[Path]:
        """Every file in the local object store (dot-files included: a half-written upload
        would show up here)."""
        root = Path(self.settings.store_root)
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []

    def scratch_files(self) -> list[Path]:
        """Files left in the API's upload scratch folder."""
        root = Path(self.settings.work_dir) / "uploads"
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []

    def assert_nothing_stored(self) -> None:
        """No checkpoint, dataset or job row, no object, no scratch file."""
        assert self.count(Checkpoint) == 0
        assert self.count(Dataset) == 0
        assert self.count(Job) == 0
        assert self.stored_files() == []
        assert self.scratch_files() == []


def make_key(sessions: sessionmaker[Session], project: str,
             scopes: tuple[str, ...] = ("read", "write")) -> tuple[str, str]:
    """(project id, key): a new key of ``project`` (created if missing) in the API's database."""
    from persistence.api_keys import create_key, create_project

    with sessions() as session:
        row = create_project(session, project, exist_ok=True)
        return row.id, create_key(session, row, list(scopes)).key


def small_cnn_state(num_classes: int = 10, in_channels: int = 1, seed: int = 0) -> dict[str, Any]:
    """A freshly initialised small_cnn state dict (CPU tensors), for digits-shaped jobs."""
    import torch

    from rift.config import ArchitectureSpec
    from rift.models import build_model

    torch.manual_seed(seed)
    model = build_model(ArchitectureSpec(name="small_cnn", num_classes=num_classes),
                        in_channels=in_channels, image_size=8)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def digits_config(**overrides: Any) -> dict[str, Any]:
    """A small valid job config for small_cnn on digits (as JSON)."""
    config: dict[str, Any] = {
        "architecture": {"name": "small_cnn", "num_classes": 10},
        "dataset": {"name": "digits"},
        "attack": {"eps": 0.1, "step_size": 0.03, "steps": 2},
        "mrc": {"steps": 1, "num_examples": 64},
        "finetune": {"epochs": 1},
        "interpolation": {"alpha_step": 0.5},
        "device": "cpu",
    }
    config.update(overrides)
    return config


def readyz_once_started(api: Api, timeout: float = 120.0) -> httpx.Response:
    """``GET /readyz`` once the validator has finished starting: the API starts it with itself,
    in the background, and says 503 (validator ``starting``) until it serves."""
    deadline = time.monotonic() + timeout
    while True:
        response = api.client.get("/readyz")
        validator = response.json().get("checks", {}).get("validator", {})
        if validator.get("state") != "starting" or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def upload_checkpoint(api: Api, path: Path) -> dict[str, Any]:
    """POST a checkpoint file; returns the record (asserts 201)."""
    with path.open("rb") as handle:
        response = api.client.post("/v1/checkpoints", files={"file": (path.name, handle)})
    assert response.status_code == 201, response.text
    return dict(response.json())


#: How long a digits job through the API and a real worker may take on a loaded CI machine.
JOB_TIMEOUT_S = 300.0


def wait_for_end(api: Api, job_id: str, workers: tuple[WorkerProcess, ...],
                 timeout: float = JOB_TIMEOUT_S) -> dict[str, Any]:
    """Poll the job until it succeeded, failed or was cancelled; returns it (fails the test with
    the workers' logs after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        job = dict(api.client.get(f"/v1/jobs/{job_id}").json())
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, [w.log()[-3000:] for w in workers]
        time.sleep(0.2)


def run_job(api: Api, checkpoint_id: str, config: dict[str, Any],
            workers: tuple[WorkerProcess, ...]) -> dict[str, Any]:
    """Create a job and wait for it; returns it (asserts it was created and succeeded)."""
    created = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint_id,
                                                "config": config})
    assert created.status_code == 201, created.text
    job = wait_for_end(api, created.json()["id"], workers)
    assert job["status"] == "succeeded", (job["error"], [w.log()[-3000:] for w in workers])
    return job


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The ``error`` object of an error response."""
    body = response.json()
    assert "error" in body, body
    return dict(body["error"])


def embedded_environment(sqlite_url: str, folder: Path) -> dict[str, str]:
    """The service variables of the embedded default: SQLite, kombu's SQLAlchemy broker on a
    SQLite file and a local object store, all under ``folder``."""
    return {
        "DATABASE_URL": sqlite_url,
        "BROKER_URL": f"sqla+sqlite:///{folder / 'broker.db'}",
        "CELERY_QUEUE": "rift",
        "STORE_KIND": "local",
        "STORE_ROOT": str(folder / "objects"),
        "WORK_DIR": str(folder / "work"),
        "WORKER_DEVICE": "cpu",
        "PROGRESS_INTERVAL_SECONDS": "0.2",
    }


def spawn_worker(env: dict[str, str], log_path: Path,
                 launcher: Launcher | None = None) -> WorkerProcess:
    """Start a real ``celery worker`` with exactly the service variables in ``env`` (not the
    test's ``service_env``), forked by ``launcher`` when one is given; call ``wait_ready()`` on
    the result."""
    import uuid

    return launch_worker(env, log_path, f"api-{uuid.uuid4().hex[:6]}", launcher)


def unthrottled_settings(api_settings: Settings, **extra: str) -> Settings:
    """``api_settings``' database, store and upload bounds, with loopback webhook targets allowed
    and no request-rate limit in the way of a test making thousands of requests (``extra``:
    more variables, e.g. ``DEFAULT_MAX_ACTIVE_JOBS``)."""
    return settings_from_env({
        "DATABASE_URL": api_settings.database_url, "BROKER_URL": "memory://",
        "STORE_KIND": "local", "STORE_ROOT": str(api_settings.store_root),
        "WORK_DIR": str(api_settings.work_dir), "WEBHOOK_ALLOW_LIST": "127.0.0.1",
        "MAX_CHECKPOINT_BYTES": str(api_settings.max_checkpoint_bytes),
        "MAX_DATASET_BYTES": str(api_settings.max_dataset_bytes),
        "DEFAULT_MAX_REQUESTS_PER_MINUTE": "1000000", **extra})


def validator_with_test_architectures(settings: Settings, tmp_path: Path,
                                      monkeypatch: Any, request: Any) -> tuple[str, Any]:
    """The test architectures installed as an entry-point distribution
    (``tests/entry_point_dist.py``) on this process's path and the validator's, and a validator
    that builds them (closed when the test ends). Returns the ``PYTHONPATH`` a worker needs to
    build them too, and the validator."""
    from api.validation import Validator
    from tests.entry_point_dist import write_entry_point_dist
    from tests.service_fixtures import PROJECT_ROOT

    plugin = write_entry_point_dist(tmp_path / "site")
    monkeypatch.syspath_prepend(str(plugin))
    python_path = f"{plugin}:{PROJECT_ROOT}"
    monkeypatch.setenv("PYTHONPATH", python_path)  # the validator's builds
    validator = Validator(settings)
    request.addfinalizer(validator.close)
    return python_path, validator
