"""The API while what it depends on is down or wrong: requests get 503 with a stable code and
Retry-After (never a 500), and /readyz names the dependency. Real servers throughout: a closed
port for a database that is gone, a moto S3 server this test starts and stops, a database
downgraded under the running API.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from api.errors import UNAVAILABLE_RETRY_AFTER_S
from persistence.db import session_factory_from_settings
from persistence.migrate import downgrade_database
from persistence.schema import MIGRATE_COMMAND
from persistence.settings import Settings
from tests.api.helpers import (
    Api,
    RecordingDispatcher,
    digits_config,
    error_of,
    free_port,
    readyz_once_started,
)
from tests.service_fixtures import settings_from_env

pytestmark = pytest.mark.service


def upload(api: Api, path: Path) -> httpx.Response:
    with path.open("rb") as handle:
        return api.client.post("/v1/checkpoints", files={"file": (path.name, handle)})


def test_database_gone_answers_503_with_retry_after(api_settings: Settings,
                                                    start_api: Callable[..., Api]) -> None:
    settings = api_settings.model_copy(update={
        "database_url": f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"})
    api = start_api(settings, dispatcher=RecordingDispatcher(),
                    session_factory=session_factory_from_settings(settings))
    # A key to look up, so the request reaches the database.
    well_formed_key = f"rift_{'a' * 12}_{'b' * 43}"
    response = api.client.get("/v1/jobs", headers={"Authorization": f"Bearer {well_formed_key}"})
    assert response.status_code == 503, response.text
    assert error_of(response)["code"] == "database_unavailable"
    assert response.headers["Retry-After"] == str(UNAVAILABLE_RETRY_AFTER_S)


def test_schema_behind_the_running_api(api_settings: Settings, api: Api) -> None:
    assert api.client.get("/v1/jobs").status_code == 200
    downgrade_database(api_settings.database_url, "base")
    response = api.client.get("/v1/jobs")
    assert response.status_code == 503, response.text
    assert error_of(response)["code"] == "database_schema_outdated"
    assert response.headers["Retry-After"] == str(UNAVAILABLE_RETRY_AFTER_S)
    ready = api.client.get("/readyz")
    assert ready.status_code == 503
    database = ready.json()["checks"]["database"]
    assert database["ok"] is False and "never migrated" in database["error"]
    assert MIGRATE_COMMAND in database["error"]
    assert ready.json()["error"]["field"] == "database"


def _s3_settings(api_settings: Settings, endpoint: str, bucket: str) -> Settings:
    return api_settings.model_copy(update={
        "store_kind": "s3", "s3_bucket": bucket, "s3_endpoint_url": endpoint,
        "s3_access_key": SecretStr("testing"), "s3_secret_key": SecretStr("testing")})


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_s3_bucket_missing(api_settings: Settings, moto_s3_endpoint: str, small_cnn_file: Path,
                           start_api: Callable[..., Api]) -> None:
    bucket = f"missing-{uuid.uuid4().hex[:8]}"
    api = start_api(_s3_settings(api_settings, moto_s3_endpoint, bucket),
                    dispatcher=RecordingDispatcher())
    ready = api.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["error"]["field"] == "object_store"
    response = upload(api, small_cnn_file)
    assert response.status_code == 503, response.text
    error = error_of(response)
    assert error["code"] == "store_unavailable"
    assert bucket in error["message"] and "does not exist" in error["message"]
    assert response.headers["Retry-After"] == str(UNAVAILABLE_RETRY_AFTER_S)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_s3_with_no_credentials_names_the_settings(
        api_settings: Settings, moto_s3_endpoint: str, small_cnn_file: Path, tmp_path: Path,
        start_api: Callable[..., Api], monkeypatch: pytest.MonkeyPatch) -> None:
    # No S3_ACCESS_KEY and nothing in boto3's chain: the 503 and /readyz said "cannot use
    # bucket ...: Unable to locate credentials", as for a server down; now they name the keys.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    settings = _s3_settings(api_settings, moto_s3_endpoint, "rift").model_copy(update={
        "s3_access_key": None, "s3_secret_key": None})
    api = start_api(settings, dispatcher=RecordingDispatcher())
    expected = (f"no S3 credentials for bucket 'rift' at {moto_s3_endpoint} (Unable to locate "
                "credentials); set S3_ACCESS_KEY and S3_SECRET_KEY")
    ready = api.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["object_store"]["error"] == (
        "refuses this deployment's settings (details in the API log)")
    response = upload(api, small_cnn_file)
    assert response.status_code == 503, response.text
    error = error_of(response)
    assert error["code"] == "store_unavailable" and error["message"].startswith(expected)
    assert response.headers["Retry-After"] == str(UNAVAILABLE_RETRY_AFTER_S)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_scratch_folder_gone_answers_uploads_503_not_500(
        api_settings: Settings, small_cnn_file: Path, tmp_path: Path,
        start_api: Callable[..., Api]) -> None:
    # WORK_DIR unmounted or replaced since the start (or its disk full): each upload was a 500
    # internal_error (FileNotFoundError / NotADirectoryError / ENOSPC from the spooling).
    (tmp_path / "gone").write_text("a file where the scratch folder was")
    api = start_api(api_settings.model_copy(update={"work_dir": tmp_path / "gone" / "work"}),
                    dispatcher=RecordingDispatcher())
    raw = api.client.post("/v1/checkpoints", params={"filename": "model.safetensors"},
                          content=small_cnn_file.read_bytes(),
                          headers={"Content-Type": "application/octet-stream"})
    for response in (raw, upload(api, small_cnn_file)):  # raw body, then multipart
        assert response.status_code == 503, response.text
        error = error_of(response)
        assert error["code"] == "scratch_unavailable"
        assert "WORK_DIR: ENOTDIR" in error["message"]
        assert response.headers["Retry-After"] == str(UNAVAILABLE_RETRY_AFTER_S)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_scratch_folder_gone_answers_a_pytorch_checkpoints_job_503_not_500(
        api: Api, small_cnn_torch_file: Path) -> None:
    # A job on a stored PyTorch checkpoint reads its tensors from a copy under WORK_DIR: with
    # the folder gone since the start, job creation was a 500 internal_error.
    stored = api.client.post("/v1/checkpoints", params={"filename": "model.pt"},
                             content=small_cnn_torch_file.read_bytes(),
                             headers={"Content-Type": "application/octet-stream"})
    assert stored.status_code == 201, stored.text
    shutil.rmtree(api.settings.work_dir)
    api.settings.work_dir.write_text("a file where the scratch folder was")
    response = api.client.post("/v1/jobs", json={"checkpoint_id": stored.json()["id"],
                                                 "config": digits_config()})
    assert response.status_code == 503, response.text
    assert error_of(response)["code"] == "scratch_unavailable"
    assert response.headers["Retry-After"] == str(UNAVAILABLE_RETRY_AFTER_S)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_s3_server_going_away(api_settings: Settings, small_cnn_file: Path,
                              start_api: Callable[..., Api]) -> None:
    server_module = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    settings = _s3_settings(api_settings, f"http://{host}:{port}", "rift")
    try:
        api = start_api(settings.model_copy(update={"s3_create_bucket": True}),
                        dispatcher=RecordingDispatcher())
        assert readyz_once_started(api).status_code == 200
        stored = upload(api, small_cnn_file)
        assert stored.status_code == 201, stored.text
    finally:
        server.stop()
    ready = api.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["object_store"]["ok"] is False
    assert ready.json()["checks"]["database"]["ok"] is True
    assert ready.json()["checks"]["object_store"]["error"] == (
        "unreachable (details in the API log)")
    again = upload(api, small_cnn_file)
    assert again.status_code == 503, again.text
    assert error_of(again)["code"] == "store_unavailable"
    # An endpoint not answering names the endpoint's setting, not the keys.
    assert error_of(again)["message"].endswith("; if it lasts, check S3_ENDPOINT_URL")
    assert again.headers["Retry-After"] == str(UNAVAILABLE_RETRY_AFTER_S)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_database_host_not_answering_is_503_within_the_connect_timeout(
        api_settings: Settings, start_api: Callable[..., Api]) -> None:
    """A port that accepts TCP connections (the kernel's backlog) but never speaks, as a host
    dropping packets behaves: without a connect timeout each request hung for minutes."""
    import socket
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        settings = api_settings.model_copy(update={
            "database_url": f"postgresql+psycopg://nobody@127.0.0.1:{port}/none",
            "database_connect_timeout_seconds": 2, "event_notify": "poll"})
        api = start_api(settings, dispatcher=RecordingDispatcher(),
                        session_factory=session_factory_from_settings(settings))
        well_formed_key = f"rift_{'a' * 12}_{'b' * 43}"
        started = time.monotonic()
        response = api.client.get("/v1/jobs",
                                  headers={"Authorization": f"Bearer {well_formed_key}"})
        took = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert error_of(response)["code"] == "database_unavailable"
    assert took < 15, f"the request took {took:.1f} s"


def test_the_pool_settings_size_the_pool_and_its_exhaustion_is_a_clear_503(
        postgres_url: str, tmp_path: Path, start_api: Callable[..., Api]) -> None:
    """DATABASE_POOL_SIZE, DATABASE_POOL_OVERFLOW and DATABASE_POOL_TIMEOUT_SECONDS reach the
    API's engine: with one connection and a short wait, a request that finds it taken is a 503
    at once (SQLAlchemy's defaults, fixed before, held it 30 s behind 14 more connections), a
    clear one, never a 500, naming the cause rather than an unreachable database."""
    import time

    settings = settings_from_env({
        "DATABASE_URL": postgres_url, "BROKER_URL": "memory://", "STORE_KIND": "local",
        "STORE_ROOT": str(tmp_path / "objects"), "WORK_DIR": str(tmp_path / "work"),
        "DATABASE_POOL_SIZE": "1", "DATABASE_POOL_OVERFLOW": "0",
        "DATABASE_POOL_TIMEOUT_SECONDS": "0.3"})
    api = start_api(settings, dispatcher=RecordingDispatcher())
    engine = api.sessions.kw["bind"]
    assert api.client.get("/v1/jobs").status_code == 200
    with engine.connect():  # the pool's only connection, held
        began = time.monotonic()
        response = api.client.get("/v1/jobs")
        waited = time.monotonic() - began
    assert response.status_code == 503, response.text
    error = error_of(response)
    assert error["code"] == "database_unavailable"
    assert "connection of this API process is in use" in error["message"]
    assert response.headers["Retry-After"] == str(UNAVAILABLE_RETRY_AFTER_S)
    assert waited < 10  # the setting's wait, not the default's 30 s
    assert api.client.get("/v1/jobs").status_code == 200
