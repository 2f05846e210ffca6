"""``/healthz`` and ``/readyz`` over HTTP: ready when the database, the broker and the store answer
and the upload validator has started; 503 naming what is down otherwise (a validator that is
still starting: not ready, while uploads wait for it). Also: the OpenAPI document and /docs are
served."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from api.dispatch import CeleryDispatcher
from api.validation import ServerLauncher, ServerProcess, Validator
from persistence.db import session_factory_from_settings
from persistence.settings import Settings
from tests.api.helpers import (
    Api,
    RecordingDispatcher,
    error_of,
    free_port,
    readyz_once_started,
)
from tests.service_fixtures import settings_from_env

pytestmark = pytest.mark.service


def test_healthz_and_docs(api: Api) -> None:
    for path in ("/healthz", "/v1/healthz"):
        response = api.client.get(path)
        assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert api.client.get("/docs").status_code == 200
    schema = api.client.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/checkpoints", "/v1/jobs/{job_id}/artifacts/{name}",
            "/v1/readyz"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert api.client.get("/v1/nothing-here").status_code == 404
    wrong_method = api.client.delete("/v1/jobs")
    assert wrong_method.status_code == 405 and error_of(wrong_method)["code"]


def test_ready_when_everything_answers(api: Api) -> None:
    response = readyz_once_started(api)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ready"
    checks = response.json()["checks"]
    assert set(checks) == {"database", "broker", "object_store", "validator"}
    assert all(check["ok"] for check in checks.values())
    assert checks["validator"]["state"] == "ready"


def test_not_ready_while_the_validator_starts_and_an_upload_waits_for_it(
        api_settings: Settings, start_api: Callable[..., Api], validator_launch: ServerLauncher,
        small_cnn_file: Path) -> None:
    gate = threading.Event()
    launches: list[Sequence[str]] = []

    def slow_start(args: Sequence[str], env: Mapping[str, str],
                   cwd: Path) -> tuple[ServerProcess, bytes]:
        launches.append(args)
        gate.wait(60)  # torch's import, taking its time
        return validator_launch(args, env, cwd)

    validator = Validator(api_settings, launch=slow_start)
    try:
        api = start_api(api_settings, dispatcher=RecordingDispatcher(), validator=validator)
        assert len(launches) == 1  # started with the app, before any upload
        assert api.client.get("/healthz").status_code == 200  # the process answers meanwhile
        response = api.client.get("/readyz")
        assert response.status_code == 503, response.text
        body = response.json()
        assert body["checks"]["validator"]["ok"] is False
        assert body["checks"]["validator"]["state"] == "starting"
        assert all(body["checks"][name]["ok"] for name in ("database", "broker", "object_store"))
        assert body["error"]["field"] == "validator" and "starting" in body["error"]["message"]

        answers: list[httpx.Response] = []

        def send() -> None:
            with small_cnn_file.open("rb") as handle:
                answers.append(api.client.post(
                    "/v1/checkpoints", files={"file": ("model.safetensors", handle)}))

        uploading = threading.Thread(target=send)
        uploading.start()
        uploading.join(1.0)
        assert uploading.is_alive() and not answers  # it waits for the validator
        gate.set()
        uploading.join(120)
        assert answers and answers[0].status_code == 201, answers[0].text if answers else None
        assert len(launches) == 1  # the upload joined the start, it did not begin another
        ready = api.client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["validator"] == {
            "ok": True, "error": None, "state": "ready"}
    finally:
        gate.set()
        validator.close()


def test_a_validator_left_to_the_first_upload_does_not_hold_readiness(
        api_settings: Settings, start_api: Callable[..., Api]) -> None:
    launches: list[Sequence[str]] = []

    def counted(args: Sequence[str], env: Mapping[str, str],
                cwd: Path) -> tuple[ServerProcess, bytes]:
        launches.append(args)
        raise AssertionError("no upload came: nothing should start the validator")

    settings = api_settings.model_copy(update={"validation_warm_start": False})
    validator = Validator(settings, launch=counted)
    api = start_api(settings, dispatcher=RecordingDispatcher(), validator=validator)
    response = api.client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["validator"] == {"ok": True, "error": None,
                                                      "state": "stopped"}
    assert launches == []


def test_not_ready_names_what_is_down(api_settings: Settings, tmp_path: Path,
                                      start_api: Callable[..., Api]) -> None:
    dispatcher = RecordingDispatcher()
    dispatcher.broker_down = True
    blocked = tmp_path / "a-file"
    blocked.write_text("the store root cannot be a file")
    settings = api_settings.model_copy(update={"store_root": blocked / "objects"})
    api = start_api(settings, dispatcher=dispatcher)
    response = api.client.get("/v1/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is False
    assert body["checks"]["object_store"]["ok"] is False
    assert "broker" in body["error"]["message"] and "object_store" in body["error"]["message"]


def test_database_down(api_settings: Settings, start_api: Callable[..., Api]) -> None:
    settings = api_settings.model_copy(update={
        "database_url": f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"})
    api = start_api(settings, dispatcher=RecordingDispatcher(),
                    session_factory=session_factory_from_settings(settings))
    response = api.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["field"] == "database"


def test_real_broker_checks(api_settings: Settings, tmp_path: Path,
                            start_api: Callable[..., Api]) -> None:
    embedded = api_settings.model_copy(update={
        "broker_url": f"sqla+sqlite:///{tmp_path / 'broker.db'}"})
    api = start_api(embedded, dispatcher=CeleryDispatcher(embedded))
    assert readyz_once_started(api).status_code == 200

    dead = api_settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    api = start_api(dead, dispatcher=CeleryDispatcher(dead))
    response = api.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"]["ok"] is False
    assert response.json()["error"]["field"] == "broker"


def test_a_schema_a_newer_release_migrated_keeps_the_api_ready(
        postgres_url: str, tmp_path: Path, start_api: Callable[..., Api]) -> None:
    """A rolling deploy migrates first (an added column, the next revision) and replaces the
    APIs one by one: the APIs still running the older release serve on (they used to answer
    /readyz 503 from the migration on, which takes every one of them out of service at once)."""
    settings = settings_from_env({
        "DATABASE_URL": postgres_url, "BROKER_URL": "memory://", "STORE_KIND": "local",
        "STORE_ROOT": str(tmp_path / "objects"), "WORK_DIR": str(tmp_path / "work")})
    api = start_api(settings, dispatcher=RecordingDispatcher())
    assert readyz_once_started(api).status_code == 200
    with api.sessions() as session, session.begin():
        session.execute(sa.text("ALTER TABLE jobs ADD COLUMN next_release_column TEXT"))
        session.execute(sa.text("UPDATE alembic_version SET version_num = '9999_next_release'"))
    response = api.client.get("/readyz")
    assert response.status_code == 200, response.text
    database = response.json()["checks"]["database"]
    assert database["ok"] is True and database["state"] == "schema_ahead"
    assert "9999_next_release" in database["error"]
    assert api.client.get("/v1/jobs").status_code == 200


def test_the_api_starts_without_torch(sqlite_url: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    # Its start-up schema check (alembic reads migrations/) included.
    code = (
        "import sys\n"
        "from api.main import create_app\n"
        "from persistence.settings import Settings\n"
        f"create_app(Settings(database_url='{sqlite_url}', "
        f"store_root='{tmp_path}/objects', broker_url='memory://'))\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
