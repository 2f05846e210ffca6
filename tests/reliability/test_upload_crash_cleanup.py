"""kill -9 of the API at each phase of an upload, then the janitor: no orphan remains.

The API runs as a uvicorn subprocess on real Postgres with a local folder or an S3 server (moto)
as object store. ``TEST_UPLOAD_PAUSE`` makes it sleep at a named phase of the object write so the
SIGKILL lands exactly there; each test first checks that the crash did leave its debris (so it
cannot pass vacuously), then runs ``python -m persistence.janitor`` with a grace period of 0.
A live upload, paused between its object and its row, is left alone within the grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from persistence.db import session_factory_from_settings
from persistence.janitor import run_janitor
from persistence.models import Checkpoint
from persistence.settings import Settings
from persistence.storage import ObjectStore
from tests.preloaded_launcher import Launcher
from tests.reliability.helpers import ApiProcess
from tests.service_fixtures import PROJECT_ROOT, settings_from_env

pytestmark = pytest.mark.service

MIB = 1024 * 1024
WAIT_S = 60.0


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid 20 MiB safetensors file: more than two S3 parts of 8 MiB."""
    import torch

    from rift.checkpoints import save_safetensors

    path = tmp_path_factory.mktemp("upload") / "big.safetensors"
    save_safetensors(path, {"weight": torch.zeros(5 * MIB, dtype=torch.float32)})
    return path


@pytest.fixture(params=["local", "s3"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "local":
        return {"STORE_KIND": "local", "STORE_ROOT": str(tmp_path / "objects")}
    endpoint = request.getfixturevalue("moto_s3_endpoint")
    return {"STORE_KIND": "s3", "S3_BUCKET": f"janitor-{uuid.uuid4().hex[:10]}",
            "S3_ENDPOINT_URL": endpoint, "S3_ACCESS_KEY": "test", "S3_SECRET_KEY": "test",
            "S3_CREATE_BUCKET": "true"}


def _api_env(store_env: dict[str, str], postgres_url: str, tmp_path: Path,
             validation_socket: Path) -> dict[str, str]:
    # The uploads are checked by the test process's shared validator server (what is tested is
    # the cleanup after a kill, not the check): one torch import for all of this file's APIs.
    return {"DATABASE_URL": postgres_url, "BROKER_URL": "memory://",
            "WORK_DIR": str(tmp_path / "work"), "MAX_CHECKPOINT_BYTES": str(64 * MIB),
            "VALIDATION_SOCKET": str(validation_socket), **store_env}


@pytest.fixture
def env(store_env: dict[str, str], postgres_url: str, tmp_path: Path,
        session_socket_path: Path) -> dict[str, str]:
    """The API's environment, once with a local store and once with S3 (moto)."""
    return _api_env(store_env, postgres_url, tmp_path, session_socket_path)


@pytest.fixture
def local_env(postgres_url: str, tmp_path: Path, session_socket_path: Path) -> dict[str, str]:
    """The API's environment with a local store (for phases that do not touch the store)."""
    return _api_env({"STORE_KIND": "local", "STORE_ROOT": str(tmp_path / "objects")},
                    postgres_url, tmp_path, session_socket_path)


@pytest.fixture
def start_api(tmp_path: Path, optional_api_launcher: Launcher | None
              ) -> Iterator[Callable[..., ApiProcess]]:
    started: list[ApiProcess] = []

    def start(env: dict[str, str]) -> ApiProcess:
        api = ApiProcess(env, tmp_path / f"api-{len(started)}.log",
                         launcher=optional_api_launcher)
        started.append(api)
        return api.wait_ready().authorize(env)

    yield start
    for api in started:
        api.kill()


def _settings(env: dict[str, str]) -> Settings:
    return settings_from_env(env)


def _checkpoint_rows(settings: Settings) -> int:
    factory = session_factory_from_settings(settings)
    try:
        with factory() as session:
            return int(session.execute(select(func.count()).select_from(Checkpoint)).scalar_one())
    finally:
        factory.kw["bind"].dispose()


def _debris(settings: Settings, store: ObjectStore) -> dict[str, list[str]]:
    scratch = settings.upload_scratch_dir
    return {
        "scratch": sorted(str(p) for p in scratch.rglob("*")) if scratch.exists() else [],
        "objects": sorted(o.key for o in store.list_objects()),
        "partial": sorted(u.key for u in store.list_partial_uploads()),
    }


def _janitor(env: dict[str, str], grace_s: float, *, command: bool = False) -> dict[str, Any]:
    """One janitor pass; with ``command``, as ``python -m persistence.janitor`` (its JSON)."""
    if command:
        result = subprocess.run(
            [sys.executable, "-m", "persistence.janitor"], cwd=PROJECT_ROOT, capture_output=True,
            env={**os.environ, **env, "JANITOR_GRACE_SECONDS": str(grace_s)}, timeout=120)
        assert result.returncode == 0, result.stderr.decode()
        return dict(json.loads(result.stdout))
    settings = settings_from_env({**env, "JANITOR_GRACE_SECONDS": str(grace_s)})
    factory = session_factory_from_settings(settings)
    try:
        with factory() as session:
            return asdict(run_janitor(session, settings.build_object_store(), settings))
    finally:
        factory.kw["bind"].dispose()


def _upload_in_background(api: ApiProcess, path: Path) -> tuple[threading.Thread, dict[str, Any]]:
    """POST the file as a raw body from a thread; the outcome lands in the returned dict."""
    outcome: dict[str, Any] = {}

    def send() -> None:
        try:
            with path.open("rb") as handle:
                outcome["response"] = httpx.post(
                    f"{api.url}/v1/checkpoints", params={"filename": path.name},
                    content=handle.read(), timeout=WAIT_S,
                    headers={**api.headers, "Content-Type": "application/octet-stream"})
        except httpx.HTTPError as exc:  # the API was killed under it
            outcome["error"] = exc

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread, outcome


def _until(condition: Callable[[], bool], what: str, api: ApiProcess) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"never saw {what}:\n{api.log()[-3000:]}"
        time.sleep(0.05)


def _assert_clean_after_janitor(env: dict[str, str], store: ObjectStore, *,
                                command: bool = False) -> dict[str, Any]:
    report = _janitor(env, grace_s=0, command=command)
    settings = _settings(env)
    assert _debris(settings, store) == {"scratch": [], "objects": [], "partial": []}, report
    assert _checkpoint_rows(settings) == 0
    return report


def test_kill_while_streaming_to_scratch(local_env: dict[str, str],
                                         start_api: Callable[..., ApiProcess],
                                         big_checkpoint: Path) -> None:
    env = local_env
    api = start_api(env)
    settings = _settings(env)
    store = settings.build_object_store()
    release = threading.Event()

    def half_then_stall() -> Iterator[bytes]:
        data = big_checkpoint.read_bytes()
        yield data[: len(data) // 2]
        release.wait(WAIT_S)

    def send() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{api.url}/v1/checkpoints", params={"filename": "big.safetensors"},
                       content=half_then_stall(), timeout=WAIT_S,
                       headers={**api.headers, "Content-Type": "application/octet-stream"})

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    scratch = settings.upload_scratch_dir
    _until(lambda: scratch.exists() and any(p.stat().st_size >= 8 * MIB
                                            for p in scratch.iterdir()), "a scratch file", api)
    api.kill()
    release.set()
    thread.join(timeout=WAIT_S)
    assert _debris(settings, store)["scratch"], "the kill left no scratch file"
    report = _assert_clean_after_janitor(env, store, command=True)
    assert len(report["scratch_files"]) == 1


def test_kill_while_writing_the_object(env: dict[str, str], start_api: Callable[..., ApiProcess],
                                       big_checkpoint: Path) -> None:
    api = start_api({**env, "TEST_UPLOAD_PAUSE": "store:60"})
    settings = _settings(env)
    store = settings.build_object_store()
    thread, _ = _upload_in_background(api, big_checkpoint)
    _until(lambda: bool(list(store.list_partial_uploads())), "a partial write", api)
    time.sleep(0.3)  # the pause is reached right after the write that made the partial visible
    api.kill()
    thread.join(timeout=WAIT_S)
    debris = _debris(settings, store)
    assert debris["partial"] and debris["scratch"] and not debris["objects"], debris
    report = _assert_clean_after_janitor(env, store)
    assert len(report["partial_uploads"]) == 1 and len(report["scratch_files"]) == 1


def test_kill_after_the_object_was_stored_before_its_row(
        env: dict[str, str], start_api: Callable[..., ApiProcess], big_checkpoint: Path) -> None:
    api = start_api({**env, "TEST_UPLOAD_PAUSE": "record:60"})
    settings = _settings(env)
    store = settings.build_object_store()
    thread, _ = _upload_in_background(api, big_checkpoint)
    _until(lambda: bool(list(store.list_objects("checkpoints/"))), "the stored object", api)
    api.kill()
    thread.join(timeout=WAIT_S)
    debris = _debris(settings, store)
    assert debris["objects"] and debris["scratch"] and not debris["partial"], debris
    assert _checkpoint_rows(settings) == 0
    report = _assert_clean_after_janitor(env, store)
    assert report["orphan_objects"] == debris["objects"]


def test_a_live_upload_is_left_alone_within_the_grace_period(
        env: dict[str, str], start_api: Callable[..., ApiProcess], big_checkpoint: Path) -> None:
    api = start_api({**env, "TEST_UPLOAD_PAUSE": "record:3"})
    settings = _settings(env)
    store = settings.build_object_store()
    thread, outcome = _upload_in_background(api, big_checkpoint)
    _until(lambda: bool(list(store.list_objects("checkpoints/"))), "the stored object", api)
    report = _janitor(env, grace_s=3600)  # runs while the API sits between object and row
    assert sum(len(v) for v in report.values() if isinstance(v, list)) == 0, report
    thread.join(timeout=WAIT_S)
    response = outcome["response"]
    assert response.status_code == 201, response.text
    key = [o.key for o in store.list_objects("checkpoints/")]
    assert key == [f"checkpoints/{response.json()['id']}.safetensors"]
    assert _checkpoint_rows(settings) == 1
