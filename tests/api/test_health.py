"""``/healthz`` and ``/readyz`` over HTTP: ready when the database, the broker and the store answer;
503 naming what is down otherwise. Also: the OpenAPI document and /docs are served."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from api.dispatch import CeleryDispatcher
from persistence.db import session_factory_from_settings
from persistence.settings import Settings
from tests.api.helpers import Api, RecordingDispatcher, error_of, free_port

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
    response = api.client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ready"
    assert all(check["ok"] for check in response.json()["checks"].values())


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
    assert api.client.get("/readyz").status_code == 200

    dead = api_settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    api = start_api(dead, dispatcher=CeleryDispatcher(dead))
    response = api.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"]["ok"] is False
    assert response.json()["error"]["field"] == "broker"


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
