"""The input rules every ``/v1`` route shares (:mod:`api.request_input`): JSON bodies are strict
(415 for another content type, 422 naming the field for NaN, NUL or a lone surrogate, never a
500), and a NUL in a path parameter is a 404 naming the parameter, not a database error."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from api.main import create_app
from api.validation import Validator
from persistence.models import Job
from persistence.settings import Settings
from tests.api.helpers import (
    MIB,
    Api,
    RecordingDispatcher,
    digits_config,
    error_of,
    make_key,
    upload_checkpoint,
)
from tests.service_fixtures import settings_from_env

pytestmark = pytest.mark.service


def api_routes(routes: Sequence[Any]) -> Iterator[APIRoute]:
    """Every APIRoute of an app, also those of included routers (which FastAPI keeps nested)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):
            yield from api_routes(route.original_router.routes)


def test_every_json_body_is_a_strict_model(api_settings: Settings,
                                           shared_validator: Validator) -> None:
    # Strict types and no unknown keys on every body FastAPI parses (POST /v1/jobs parses its
    # own, strictly): a new route with a lax model fails here.
    app = create_app(api_settings, dispatcher=RecordingDispatcher(), validator=shared_validator)
    bodies = [route for route in api_routes(app.routes) if route.body_field is not None]
    assert len(bodies) >= 4, [route.path for route in bodies]
    for route in bodies:
        model: Any = route.body_field.field_info.annotation  # type: ignore[union-attr]
        config = model.model_config
        assert config.get("strict") is True, (route.path, model)
        assert config.get("extra") == "forbid", (route.path, model)


@pytest.fixture
def hooks_api(api_settings: Settings, start_api: Callable[..., Api]) -> Api:
    """The API with loopback webhook targets allowed, so a webhook body reaches the database."""
    settings = settings_from_env({
        "DATABASE_URL": api_settings.database_url, "BROKER_URL": "memory://",
        "STORE_KIND": "local", "STORE_ROOT": api_settings.store_root,
        "WORK_DIR": api_settings.work_dir, "WEBHOOK_ALLOW_LIST": "127.0.0.1"})
    return start_api(settings, dispatcher=RecordingDispatcher())


def succeeded_job(api: Api, small_cnn_file: Path) -> str:
    checkpoint = upload_checkpoint(api, small_cnn_file)
    job = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                            "config": digits_config()}).json()
    with api.sessions() as session:
        row = session.get(Job, job["id"])
        assert row is not None
        row.status = "succeeded"
        session.commit()
    return str(job["id"])


def post_raw(api: Api, path: str, body: bytes, content_type: str | None = "application/json",
             key: str | None = None) -> Any:
    client = api.client_for(key) if key else api.client
    headers = {"Content-Type": content_type} if content_type else {}
    try:
        return client.post(path, content=body, headers=headers)
    finally:
        if key:
            client.close()


def test_json_bodies_of_every_route_follow_the_same_rules(hooks_api: Api,
                                                         small_cnn_file: Path) -> None:
    api = hooks_api
    job_id = succeeded_job(api, small_cnn_file)
    _, admin_key = make_key(api.sessions, "ops", ("admin",))
    hook = '{"url": "http://127.0.0.1:9/hook", "description": %s}'
    cases: list[tuple[str, bytes, str | None, int, str]] = [
        # Before: 500 (a lone surrogate cannot be encoded for the database).
        ("/v1/webhooks", (hook % '"\\ud800"').encode(), None, 422, "description"),
        # Before: 422 invalid_value with field null (Postgres refuses NUL).
        ("/v1/webhooks", (hook % '"a\\u0000b"').encode(), None, 422, "description"),
        ("/v1/webhooks", b'{"url": "http://127.0.0.1:9/\\u0000"}', None, 422, "url"),
        ("/v1/admin/projects/tests/keys", b'{"name": "a\\u0000b"}', admin_key, 422, "name"),
        # Before: NaN read as a number, and the 422 blamed the range of alpha.
        (f"/v1/jobs/{job_id}/materialize", b'{"alpha": NaN}', None, 422, "body"),
        # Before: "0.5" and true were read as numbers, "yes" as true: 202.
        (f"/v1/jobs/{job_id}/materialize", b'{"alpha": "0.5"}', None, 422, "alpha"),
        (f"/v1/jobs/{job_id}/materialize", b'{"alpha": true}', None, 422, "alpha"),
        (f"/v1/jobs/{job_id}/materialize", b'{"alpha": 0.5, "evaluate": "yes"}', None, 422,
         "evaluate"),
    ]
    # Before: 400 "There was an error parsing the body" naming no field (FastAPI's words for a
    # body that is not UTF-8 or nests past Python's recursion limit), and a syntax error's
    # character offset given as the field ("16").
    unreadable: list[tuple[bytes, str]] = [
        (b'{"url": "\xff\xfe"}', "the body is not UTF-8 (byte 0xff at position 9)"),
        # Before: read (json.loads guesses UTF-16 and UTF-32 from the first bytes), 201.
        ('{"url": "http://127.0.0.1:9/hook"}'.encode("utf-16"),
         "the body is not UTF-8 (byte 0xff at position 0)"),
        ('{"url": "http://127.0.0.1:9/hook"}'.encode("utf-32"),
         "the body is not UTF-8 (byte 0xff at position 0)"),
        (b"[" * 100_000 + b"]" * 100_000, "nest more than 64 levels deep"),
        (b'{"a":' * 70 + b"1" + b"}" * 70, "nest more than 64 levels deep"),
        (b'{"url": "http://127.0.0.1:9/hook"} x', "Extra data at line 1, column 36"),
        (b'{\n "url": 1,\n}', "Expecting property name enclosed in double quotes at line 3, "
         "column 1"),
    ]
    for body, said in unreadable:
        for path in ("/v1/webhooks", "/v1/jobs"):
            response = post_raw(api, path, body)
            assert response.status_code == 422, (path, body[:40], response.text)
            error = error_of(response)
            assert error["field"] == "body" and said in error["message"], (path, error)
    for path, body, key, status, field in cases:
        response = post_raw(api, path, body, key=key)
        assert response.status_code == status, (path, body, response.text)
        assert error_of(response)["field"] == field, (path, body, response.text)

    # Before: 422 "Input should be a valid dictionary", the documented 415 only on some routes.
    for path, key in [("/v1/webhooks", None), (f"/v1/jobs/{job_id}/materialize", None),
                      ("/v1/admin/projects", admin_key)]:
        for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
            response = post_raw(api, path, b'{"alpha": 0.5}', content_type, key=key)
            assert response.status_code == 415, (path, content_type, response.text)
            error = error_of(response)
            assert error["field"] == "Content-Type"
            assert (content_type or "none") in error["message"]
    assert api.client.get("/v1/webhooks").json()["items"] == []
    assert api.client.get(f"/v1/jobs/{job_id}/materializations").json()["items"] == []
    # A JSON content type with parameters, or a +json one, is still JSON.
    ok = post_raw(api, f"/v1/jobs/{job_id}/materialize", b'{"alpha": 1}',
                  "application/merge-patch+json; charset=utf-8")
    assert ok.status_code == 202, ok.text
    # A UTF-8 byte order mark may be ignored (RFC 8259 §8.1), and is.
    marked = post_raw(api, f"/v1/jobs/{job_id}/materialize", b'\xef\xbb\xbf{"alpha": 0.5}')
    assert marked.status_code == 202, marked.text


def test_a_nul_in_a_path_parameter_is_a_404_naming_it(api: Api, small_cnn_file: Path) -> None:
    job_id = succeeded_job(api, small_cnn_file)
    _, admin_key = make_key(api.sessions, "ops", ("admin",))
    admin = api.client_for(admin_key)
    try:
        # Before: each was 422 invalid_value with field null (the database refused the NUL).
        for client, method, path, field in [
            (api.client, "GET", f"/v1/jobs/{job_id}/materializations/a%00b", "materialization_id"),
            (admin, "GET", "/v1/admin/projects/a%00b/keys", "name"),
            (admin, "DELETE", "/v1/admin/projects/tests/keys/a%00b", "key_id"),
            (api.client, "GET", "/v1/jobs/a%00b", "job_id"),
        ]:
            response = client.request(method, path)
            assert response.status_code == 404, (path, response.text)
            error = error_of(response)
            assert error["field"] == field, (path, response.text)
            assert error["code"].endswith("not_found")
    finally:
        admin.close()


def test_project_limits_beyond_the_database_column_name_the_field(api: Api) -> None:
    _, admin_key = make_key(api.sessions, "ops", ("admin",))
    admin = api.client_for(admin_key)
    try:
        for field in ("max_stored_bytes", "max_job_cost"):
            # Before: 422 invalid_value with field null (BIGINT out of range).
            response = admin.post("/v1/admin/projects", json={"name": "big", field: 2**63})
            assert response.status_code == 422, response.text
            assert error_of(response)["field"] == field
        largest = admin.post("/v1/admin/projects", json={"name": "big",
                                                         "max_stored_bytes": 2**63 - 1})
        assert largest.status_code == 201, largest.text
        assert largest.json()["max_stored_bytes"] == 2**63 - 1
    finally:
        admin.close()


def test_query_parameters_must_be_known_and_single_valued(api: Api, small_cnn_file: Path) -> None:
    checkpoint = upload_checkpoint(api, small_cnn_file)
    for team in ("a", "b"):
        created = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                                    "config": digits_config(),
                                                    "labels": {"team": team}})
        assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    # Before: each was a 200 that ignored the parameter (every job listed for the typo), kept
    # only the last limit, or only the last label condition (team:b's jobs for a:AND:b).
    for path, field, code in [
        ("/v1/jobs?stauts=failed", "stauts", "unknown_parameter"),
        (f"/v1/jobs/{job_id}?expand=config", "expand", "unknown_parameter"),
        ("/v1/jobs?limit=1&limit=50", "limit", "repeated_parameter"),
        ("/v1/jobs?label=team:a&label=team:b", "label", "invalid_input"),
        # Before: 503 database_unavailable (the statement grew too large for the database).
        ("/v1/jobs?" + "&".join(f"label=k{i}:v" for i in range(2000)), "label",
         "repeated_parameter"),
        # Before: 200 listing every job, as if unfiltered.
        ("/v1/jobs?status=", "status", "empty_parameter"),
        ("/v1/jobs?status=queued,,failed", "status", "empty_parameter"),
        ("/v1/jobs?expand=", "expand", "empty_parameter"),
        ("/v1/jobs?expand=config,", "expand", "empty_parameter"),
        ("/v1/jobs?label=%20", "label", "empty_parameter"),
        ("/v1/jobs?cursor=", "cursor", "empty_parameter"),
        ("/v1/checkpoints?format=", "format", "empty_parameter"),
        ("/v1/datasets?limit=", "limit", "empty_parameter"),
        (f"/v1/jobs/{job_id}/events?after=", "after", "empty_parameter"),
    ]:
        response = api.client.get(path)
        assert response.status_code == 422, (path, response.text)
        error = error_of(response)
        assert (error["field"], error["code"]) == (field, code), (path, response.text)
        assert field in error["message"]
    # A mistyped choice names the closest (before: only the list).
    for path, said in [("/v1/jobs?status=canceled", "did you mean 'cancelled'?"),
                       ("/v1/jobs?expand=Config", "did you mean 'config'?")]:
        assert said in error_of(api.client.get(path))["message"], path
    # Parameters that take several values still may repeat, and a repeated label condition is
    # just the same condition.
    listed = api.client.get("/v1/jobs", params=[("status", "queued"), ("status", "failed"),
                                                ("label", "team:a"), ("label", "team:a")])
    assert listed.status_code == 200, listed.text
    assert [job["labels"] for job in listed.json()["items"]] == [{"team": "a"}]
    # The raw upload's ?filename= is declared, so it is still accepted.
    raw = api.client.post("/v1/checkpoints", params={"filename": "mine.safetensors"},
                          content=small_cnn_file.read_bytes(),
                          headers={"Content-Type": "application/octet-stream"})
    assert raw.status_code == 201 and raw.json()["filename"] == "mine.safetensors", raw.text


def test_a_label_filter_written_key_equals_value_suggests_key_colon_value(api: Api) -> None:
    # riftctl's --label and a job's labels read team=vision; the query says team:vision.
    # Before: "must be key:value ..." without the filter it meant.
    response = api.client.get("/v1/jobs", params={"label": "team=vision"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "label"
    assert error["message"].endswith("; did you mean 'team:vision'?"), error
    plain = api.client.get("/v1/jobs", params={"label": "team"}).json()["error"]["message"]
    assert "did you mean" not in plain


def test_a_key_can_be_made_without_a_body(api: Api) -> None:
    # Before: 422 "body: Field required", although every field of the body has a default.
    _, admin_key = make_key(api.sessions, "ops", ("admin",))
    with api.client_for(admin_key) as admin:
        created = admin.post("/v1/admin/projects/tests/keys")
        assert created.status_code == 201, created.text
        assert created.json()["scopes"] == ["read", "write"]
        named = admin.post("/v1/admin/projects/tests/keys", json={"name": "ci"})
        assert named.status_code == 201 and named.json()["name"] == "ci", named.text


def test_a_raw_upload_typed_as_json_or_as_no_media_type_is_a_415(api: Api,
                                                                 small_cnn_file: Path) -> None:
    # Before: each body was read as the file, and refused for its content (422 naming file:
    # "neither safetensors nor a PyTorch file"), though its Content-Type was what was wrong.
    for path in ("/v1/checkpoints", "/v1/datasets"):
        for content_type in ("application/json", "application/json; charset=latin-1",
                             "application/", b"\xff"):
            response = api.client.post(path, content=b'{"file": "x"}',
                                       headers={"Content-Type": content_type})
            assert response.status_code == 415, (path, content_type, response.text)
            assert error_of(response)["field"] == "Content-Type"
    # A well-formed non-JSON type is still the raw file.
    raw = api.client.post("/v1/checkpoints", content=small_cnn_file.read_bytes(),
                          headers={"Content-Type": "application/x-safetensors"})
    assert raw.status_code == 201, raw.text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_long_lists_and_many_keys_within_the_body_limit_are_refused_at_once(api: Api) -> None:
    # Each item's repeats were counted with list.count, quadratic in the list: one body under
    # the 1 MiB limit held an API worker for 50 s (50,000 label keys, each route alike) or 13 s
    # (100,000 module names, before the 256-item bound was applied). Linear, each answer takes
    # well under a second here; the client's timeout is a hang guard, far from both.
    client = httpx.Client(base_url=api.url, timeout=10,
                          headers={"Authorization": f"Bearer {api.key}"})
    keys = ", ".join(f'"k{i}": "v"' for i in range(50_000))
    modules = ", ".join(['"conv1"'] * 100_000)
    rates = ", ".join(["0.01"] * 100_000)

    def job_with(section: str, name: str, items: str) -> str:
        config = {**digits_config(), section: {name: "@"}}
        return json.dumps({"checkpoint_id": "c", "config": config}).replace('"@"', f"[{items}]")

    cases = [
        ("/v1/jobs", '{"labels": {' + keys + ', "k7": "v"}, "config": {}}', "labels.k7",
         "given more than once"),
        ("/v1/webhooks", '{"url": "https://example.com/h", "x": {' + keys + '}}', "x",
         "unknown setting"),
        ("/v1/jobs", job_with("mrc", "modules", modules), "config.mrc.modules", "at most 256"),
        ("/v1/jobs", job_with("finetune", "lr_grid", rates), "config.finetune.lr_grid",
         "at most 256"),
    ]
    try:
        for path, body, field, said in cases:
            assert len(body) < MIB
            response = client.post(path, content=body,
                                   headers={"Content-Type": "application/json"})
            assert response.status_code == 422, (path, field, response.text[:300])
            error = error_of(response)
            assert error["field"] == field and said in error["message"], (path, error)
    finally:
        client.close()
