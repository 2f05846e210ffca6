"""Identity and ownership on every route of the app, each method (HEAD and OPTIONS included),
read from the app object itself: a route added later is checked without a line here, and one
missing from :data:`ROUTES` (or listed there but gone) fails the test.

For every route that needs a key, each of these gets the 401 or 403 that names the
``Authorization`` header, with ``WWW-Authenticate``, before anything about the request is looked
at (its path ids, its body, even a malformed one): no header, malformed ones (``Bearer`` alone,
``Basic``, the key without its scheme, a key with a non-ASCII byte or a space in it), an
unknown key, a revoked key, and a key without the scope the route needs. Another project's
resources answer exactly as missing ones do (status, body and headers, the ids aside), also to
an admin key; malformed path ids (very long, ``..``, a percent-encoded slash, NUL, non-ASCII)
are a 404 naming the parameter. No answer is a 500, and none to the other project carries
anything of the owner's (its ids' hashes, its project, its webhook URL) in its body or headers.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from api.main import create_app
from api.validation import Validator
from persistence.api_keys import revoke_key
from persistence.models import ApiKey, Artifact
from persistence.settings import Settings
from persistence.storage import LocalObjectStore
from tests.api.app_routes import app_routes
from tests.api.helpers import (
    Api,
    RecordingDispatcher,
    digits_config,
    make_key,
    unthrottled_settings,
)
from tests.api.test_api_fuzz import dataset_npz

pytestmark = pytest.mark.service


class Access(enum.Enum):
    """Who may call a route."""

    OPEN = "no key"
    OPERATOR = "METRICS_TOKEN when set (tests/api/test_observability.py)"
    READ = "a key with the read scope"
    WRITE = "a key with the write scope"
    ADMIN = "a key with the admin scope"


#: Every route of the app and who may call it. A new route fails the test until it is listed.
ROUTES: dict[tuple[str, str], Access] = {
    ("GET", "/openapi.json"): Access.OPEN,
    ("GET", "/docs"): Access.OPEN,
    ("GET", "/redoc"): Access.OPEN,
    ("GET", "/static/{path}"): Access.OPEN,
    ("GET", "/healthz"): Access.OPEN,
    ("GET", "/readyz"): Access.OPEN,
    ("GET", "/v1/healthz"): Access.OPEN,
    ("GET", "/v1/readyz"): Access.OPEN,
    ("GET", "/metrics"): Access.OPERATOR,
    ("POST", "/v1/checkpoints"): Access.WRITE,
    ("GET", "/v1/checkpoints"): Access.READ,
    ("GET", "/v1/checkpoints/{checkpoint_id}"): Access.READ,
    ("DELETE", "/v1/checkpoints/{checkpoint_id}"): Access.WRITE,
    ("POST", "/v1/datasets"): Access.WRITE,
    ("GET", "/v1/datasets"): Access.READ,
    ("GET", "/v1/datasets/{dataset_id}"): Access.READ,
    ("DELETE", "/v1/datasets/{dataset_id}"): Access.WRITE,
    ("POST", "/v1/jobs"): Access.WRITE,
    ("GET", "/v1/jobs"): Access.READ,
    ("GET", "/v1/jobs/{job_id}"): Access.READ,
    ("DELETE", "/v1/jobs/{job_id}"): Access.WRITE,
    ("POST", "/v1/jobs/{job_id}/cancel"): Access.WRITE,
    ("GET", "/v1/jobs/{job_id}/events"): Access.READ,
    ("GET", "/v1/jobs/{job_id}/mrc"): Access.READ,
    ("GET", "/v1/jobs/{job_id}/curves"): Access.READ,
    ("GET", "/v1/jobs/{job_id}/artifacts"): Access.READ,
    ("GET", "/v1/jobs/{job_id}/artifacts/{name}"): Access.READ,
    ("GET", "/v1/jobs/{job_id}/report"): Access.READ,
    ("POST", "/v1/jobs/{job_id}/materialize"): Access.WRITE,
    ("GET", "/v1/jobs/{job_id}/materializations"): Access.READ,
    ("GET", "/v1/jobs/{job_id}/materializations/{materialization_id}"): Access.READ,
    ("POST", "/v1/jobs/{job_id}/mlflow-export"): Access.WRITE,
    ("POST", "/v1/webhooks"): Access.WRITE,
    ("GET", "/v1/webhooks"): Access.READ,
    ("GET", "/v1/webhooks/{webhook_id}"): Access.READ,
    ("DELETE", "/v1/webhooks/{webhook_id}"): Access.WRITE,
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): Access.READ,
    ("GET", "/v1/usage"): Access.READ,
    ("GET", "/v1/audit-events"): Access.READ,
    ("GET", "/v1/admin/projects"): Access.ADMIN,
    ("POST", "/v1/admin/projects"): Access.ADMIN,
    ("GET", "/v1/admin/projects/{name}"): Access.ADMIN,
    ("PATCH", "/v1/admin/projects/{name}"): Access.ADMIN,
    ("DELETE", "/v1/admin/projects/{name}"): Access.ADMIN,
    ("GET", "/v1/admin/projects/{name}/usage"): Access.ADMIN,
    ("GET", "/v1/admin/projects/{name}/keys"): Access.ADMIN,
    ("POST", "/v1/admin/projects/{name}/keys"): Access.ADMIN,
    ("GET", "/v1/admin/projects/{name}/keys/{key_id}"): Access.ADMIN,
    ("DELETE", "/v1/admin/projects/{name}/keys/{key_id}"): Access.ADMIN,
    ("GET", "/v1/admin/workers"): Access.ADMIN,
    ("GET", "/v1/admin/audit-events"): Access.ADMIN,
}
KEYED = (Access.READ, Access.WRITE, Access.ADMIN)
#: Valid bodies, so that an answer is about the key or the ids, never the body.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/jobs/{job_id}/materialize"): {"alpha": 0.5},
    ("POST", "/v1/webhooks"): {"url": "http://127.0.0.1:9/matrix-hook"},
    ("POST", "/v1/admin/projects"): {"name": "matrix-new"},
    ("PATCH", "/v1/admin/projects/{name}"): {"max_active_jobs": 7},
    ("POST", "/v1/admin/projects/{name}/keys"): {"scopes": ["read"]},
}
OWNER, STRANGER = "owner-a7", "stranger-b3"
#: A well-formed key that no project has.
UNKNOWN_KEY = "rift_0123456789ab_" + "A" * 43
#: A path segment each (percent-encoded where the character would not reach the app as it is).
MALFORMED_SEGMENTS = ["x" * 300, "%2E%2E", "%C3%A9t%C3%A9", "%00", "%20%09", "%25", "%FF",
                      "a%2Fb", "%2E%2E%2F%2E%2E"]
#: Each request of another project's ids is sent plain and with these: conditions that would
#: pass (or fail) on the owner's resource, a range, a live event stream.
CROSS_HEADERS: list[dict[str, str]] = [
    {}, {"If-None-Match": "*", "Range": "bytes=0-3"},
    {"If-Match": '"0"', "If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"},
    {"Accept": "text/event-stream", "Last-Event-ID": "0"}]
#: Headers that differ between any two answers whatever they are about.
VOLATILE_HEADERS = frozenset({"date", "x-request-id", "server"})
UNKNOWN_IDS = {"checkpoint_id": "0" * 32, "dataset_id": "1" * 32, "job_id": "2" * 32,
               "webhook_id": "3" * 32, "materialization_id": "4" * 32, "key_id": "5" * 32}


@pytest.fixture
def matrix_api(api_settings: Settings, start_api: Callable[..., Api]) -> Api:
    """The API (SQLite and Postgres) with loopback webhook targets allowed and no request-rate
    limit in the way of the matrix's requests."""
    return start_api(unthrottled_settings(api_settings), dispatcher=RecordingDispatcher())


@dataclass
class World:
    """The owner's resources, the keys the matrix calls with, and what must never reach the
    stranger."""

    owner_ids: dict[str, str]
    keys: dict[str, str]
    #: The owner's values that no answer to another project may contain.
    secrets: list[str]


def _key_id(api: Api, key: str) -> str:
    with api.sessions() as session:
        return str(session.execute(select(ApiKey.id).where(
            ApiKey.prefix == key.split("_")[1])).scalar_one())


def _build_world(api: Api, small_cnn_file: Path) -> World:
    _, owner_key = make_key(api.sessions, OWNER)
    owner = api.client_for(owner_key)
    try:
        uploaded = owner.post("/v1/checkpoints", files={
            "file": ("owner-weights.safetensors", small_cnn_file.read_bytes())})
        assert uploaded.status_code == 201, uploaded.text
        checkpoint = uploaded.json()
        dataset = owner.post("/v1/datasets", files={"file": ("owner-data.npz", dataset_npz())})
        assert dataset.status_code == 201, dataset.text
        job = owner.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                           "config": digits_config()})
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]
        payload = b"owner's tuned weights"
        stored = LocalObjectStore(api.settings.store_root).put_bytes(
            f"jobs/{job_id}/artifacts/tuned.safetensors", payload)
        with api.sessions() as session:
            from persistence.models import Job
            row = session.get(Job, job_id)
            assert row is not None
            row.status = "succeeded"
            session.add(Artifact(job_id=job_id, name="tuned.safetensors", storage_key=stored.key,
                                 size=stored.size, sha256=stored.sha256,
                                 content_type="application/octet-stream"))
            session.commit()
        made = owner.post(f"/v1/jobs/{job_id}/materialize", json={"alpha": 0.25})
        assert made.status_code == 202, made.text
        hook_url = "http://127.0.0.1:9/owner-secret-hook"
        hook = owner.post("/v1/webhooks", json={"url": hook_url})
        assert hook.status_code == 201, hook.text
        assert owner.get(f"/v1/jobs/{job_id}/artifacts/tuned.safetensors").content == payload
    finally:
        owner.close()
    _, stranger_key = make_key(api.sessions, STRANGER)
    _, reader_key = make_key(api.sessions, STRANGER, ("read",))
    _, admin_key = make_key(api.sessions, "ops", ("admin",))
    _, revoked_key = make_key(api.sessions, STRANGER)
    with api.sessions() as session:
        revoke_key(session, _key_id(api, revoked_key))
    owner_ids = {"checkpoint_id": checkpoint["id"], "dataset_id": dataset.json()["id"],
                 "job_id": job_id, "materialization_id": made.json()["id"],
                 "webhook_id": hook.json()["id"], "key_id": _key_id(api, owner_key)}
    with api.sessions() as session:
        from persistence.models import Project
        project_id = session.execute(select(Project.id).where(Project.name == OWNER)).scalar_one()
    secrets = [OWNER, project_id, checkpoint["sha256"], dataset.json()["sha256"], stored.sha256,
               "owner-secret-hook", hook.json()["secret"], owner_key.split("_")[1],
               "owner-data.npz", "owner-weights.safetensors"]
    return World(owner_ids=owner_ids, secrets=secrets,
                 keys={"owner": owner_key, "stranger": stranger_key, "reader": reader_key,
                       "admin": admin_key, "revoked": revoked_key})


def _as(api: Api, client: httpx.Client) -> Api:
    """``api`` whose default client is ``client`` (for the upload helper)."""
    return Api(api.url, client, api.settings, api.sessions, api.dispatcher)


def _fill(template: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], template)


def _params(template: str) -> list[str]:
    return re.findall(r"\{(\w+)\}", template)


def _owner_values(template: str, world: World) -> dict[str, str]:
    values = dict(world.owner_ids)
    values["name"] = OWNER if template.startswith("/v1/admin/") else "tuned.safetensors"
    return values


def _unknown_values(template: str) -> dict[str, str]:
    values = dict(UNKNOWN_IDS)
    values["name"] = "nobody-c" if template.startswith("/v1/admin/") else "tuned.safetensors"
    return values


def _methods(method: str) -> list[str]:
    """The method and HEAD with a GET (middleware serves it for every GET route)."""
    return [method, "HEAD"] if method == "GET" else [method]


def _keyed_routes() -> Iterator[tuple[str, str, Access]]:
    for (method, template), access in sorted(ROUTES.items()):
        if access in KEYED:
            for sent in _methods(method):
                yield sent, template, access


def _call(client: httpx.Client, method: str, path: str, template: str, *,
          body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    if body is None:
        body = BODIES.get((method, template))
    return client.request(method, path, json=body, headers=headers)


def _error(response: httpx.Response, method: str) -> dict[str, Any]:
    """The API's error object (HEAD has no body: an empty one)."""
    if method == "HEAD":
        assert response.content == b""
        return {}
    assert response.headers["content-type"].startswith("application/json"), response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] and error["message"], error
    return error


def _no_server_error(response: httpx.Response, what: object) -> None:
    assert response.status_code < 500, (what, response.status_code, response.text[:500])


def _refused_for_the_key(response: httpx.Response, method: str, status: int, what: object,
                         scope: str | None = None) -> None:
    assert response.status_code == status, (what, response.status_code, response.text[:300])
    challenge = response.headers.get("www-authenticate", "")
    assert challenge.startswith('Bearer realm="rift"'), (what, response.headers)
    error = _error(response, method)
    if not error:
        return
    assert error["field"] == "Authorization", (what, error)
    if status == 401:
        assert error["code"] == "unauthorized", (what, error)
    else:
        assert (error["code"], error["required_scope"]) == ("insufficient_scope", scope), error
        assert f"'{scope}'" in error["message"], error


def _leaks(response: httpx.Response, secrets: list[str]) -> list[str]:
    seen = response.text + "\n" + "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    return [secret for secret in secrets if secret in seen]


def _shape(response: httpx.Response, ids: dict[str, str]) -> tuple[Any, ...]:
    """The answer with every id of the request replaced by a placeholder: two equal shapes tell
    nothing apart."""

    def hide(text: str) -> str:
        for value in ids.values():
            text = text.replace(value, "<id>")
        return text

    headers = sorted((k, hide(v)) for k, v in response.headers.items()
                     if k not in VOLATILE_HEADERS and k != "etag")
    return response.status_code, hide(response.text), headers


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_route_is_classified(matrix_api: Api, shared_validator: Validator) -> None:
    app = create_app(matrix_api.settings, dispatcher=RecordingDispatcher(),
                     validator=shared_validator, session_factory=matrix_api.sessions)
    served = app_routes(app)
    assert len(served) >= 40, served
    assert served - ROUTES.keys() == set(), "new routes: add them to ROUTES with their access"
    assert ROUTES.keys() - served == set(), "routes gone: remove them from ROUTES"


@pytest.fixture
def world(matrix_api: Api, small_cnn_file: Path) -> World:
    return _build_world(matrix_api, small_cnn_file)


#: Postgres, the production database (the key's look-up is one query, the same on SQLite).
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_every_keyed_route_refuses_a_missing_bad_or_weak_key_first(
        matrix_api: Api, world: World) -> None:
    api = matrix_api
    anonymous = api.client_for(None)
    keyed = {name: api.client_for(key) for name, key in world.keys.items()}
    key = world.keys["stranger"]
    bad_headers: list[dict[str, Any]] = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic b3duZXI6cGFzc3dvcmQ="},
        {"Authorization": key},  # the scheme left out
        {"Authorization": f"Token {key}"},
        {"Authorization": f"Bearer {key[:-1]}\u00e9".encode()},  # UTF-8 bytes in the key
        {"Authorization": f"Bearer {key[:20]} {key[20:]}"},
        {"Authorization": f"Bearer {key}x"},
        # The key's prefix with another secret of the right form: found, and its hash differs.
        {"Authorization": f"Bearer {key[:-1]}{'B' if key[-1] != 'B' else 'C'}"},
        {"Authorization": f"Bearer {UNKNOWN_KEY}"},
        {"Authorization": f"Bearer {world.keys['revoked']}"},
        {"Cookie": f"Authorization=Bearer {key}"},
    ]
    try:
        for method, template, access in _keyed_routes():
            # The owner's ids and the unknown ones: the key is judged first, whatever the ids.
            for values in (_owner_values(template, world), _unknown_values(template)):
                path = _fill(template, values)
                # HEAD is GET's answer without the body (tests/api/test_head_requests.py): the
                # kinds of refusal, not every header again.
                tried = bad_headers if method != "HEAD" else bad_headers[:1] + bad_headers[-3:]
                if values["job_id"] == UNKNOWN_IDS["job_id"]:
                    tried = tried[:1] + tried[-3:]
                for headers in tried:
                    what = (method, template, headers)
                    response = _call(anonymous, method, path, template, headers=headers)
                    _refused_for_the_key(response, method, 401, what)
                    assert not _leaks(response, world.secrets), what
                # A read key on a write or admin route, a read+write one on an admin route.
                for name, lacks in (("reader", (Access.WRITE, Access.ADMIN)),
                                    ("stranger", (Access.ADMIN,))):
                    if access in lacks:
                        response = _call(keyed[name], method, path, template)
                        scope = "admin" if access is Access.ADMIN else "write"
                        _refused_for_the_key(response, method, 403, (method, template, name),
                                             scope)
                        assert not _leaks(response, world.secrets), (method, template)
            # A malformed body is not looked at before the key either (nor its size).
            if method in ("POST", "PATCH"):
                path = _fill(template, _owner_values(template, world))
                for client, status in ((anonymous, 401), (keyed["reader"], 403)):
                    for content in (b"{", b"\xff\xfe", b'{"alpha": NaN}', b"[" * 5000):
                        response = client.request(method, path, content=content, headers={
                            "Content-Type": "application/json"})
                        _refused_for_the_key(response, method, status, (method, template, content),
                                             "admin" if access is Access.ADMIN else "write")
    finally:
        anonymous.close()
        for client in keyed.values():
            client.close()


def test_another_projects_resources_answer_like_missing_ones(
        matrix_api: Api, world: World) -> None:
    api = matrix_api
    clients = {name: api.client_for(world.keys[name]) for name in ("stranger", "reader", "admin")}
    checked = 0
    try:
        for method, template, access in _keyed_routes():
            if not _params(template):
                continue
            theirs, unknown = _owner_values(template, world), _unknown_values(template)
            for name, client in clients.items():
                if access is Access.WRITE and name == "reader":
                    continue  # a 403 before any id (checked above)
                if access is Access.ADMIN and name == "admin":
                    continue  # an admin key manages every project (by design)
                # The conditions, range and stream with one key and the full methods (HEAD is
                # GET's answer without the body).
                tried = CROSS_HEADERS if name == "stranger" and method != "HEAD" else [{}]
                for headers in tried:
                    if "Last-Event-ID" in headers and not template.endswith("/events"):
                        continue  # a JSON route's 406, the same for any id
                    answer = _call(client, method, _fill(template, theirs), template,
                                   headers=headers)
                    what = (name, method, template, headers)
                    _no_server_error(answer, what)
                    baseline = _call(client, method, _fill(template, unknown), template,
                                     headers=headers)
                    assert _shape(answer, theirs) == _shape(baseline, unknown), (
                        what, answer.text)
                    assert not _leaks(answer, world.secrets), (what, _leaks(answer,
                                                                            world.secrets))
                    # Another project's resource is not found (whatever a condition, a range or
                    # a stream asked); an admin route tells any key but an admin's the scope,
                    # whether the project exists or not.
                    assert answer.status_code == (403 if access is Access.ADMIN else 404), (
                        what, answer.text)
                checked += 1
        assert checked >= 40
        # Ids named in a body: a job on the owner's checkpoint, or on a checkpoint of one's own
        # with the owner's dataset, is refused as for ids that do not exist.
        stranger = clients["stranger"]
        npz_config = {"architecture": {"name": "small_cnn", "num_classes": 10},
                      "dataset": {"name": "npz"}, "device": "cpu"}
        # (The dataset is looked up before the checkpoint: any checkpoint id will do.)
        for field, body in (("checkpoint_id", {"config": digits_config()}),
                            ("dataset_id", {"checkpoint_id": UNKNOWN_IDS["checkpoint_id"],
                                            "config": npz_config})):
            theirs, unknown = world.owner_ids[field], UNKNOWN_IDS[field]
            answer = stranger.post("/v1/jobs", json={**body, field: theirs})
            baseline = stranger.post("/v1/jobs", json={**body, field: unknown})
            assert answer.status_code == 422, answer.text
            assert _shape(answer, {field: theirs}) == _shape(baseline, {field: unknown})
            assert not _leaks(answer, world.secrets), answer.text
        # The owner's resources are all there still, untouched by the others' writes.
        with api.client_for(world.keys["owner"]) as owner:
            ids = world.owner_ids
            for path in (f"/v1/checkpoints/{ids['checkpoint_id']}",
                         f"/v1/datasets/{ids['dataset_id']}", f"/v1/jobs/{ids['job_id']}",
                         f"/v1/webhooks/{ids['webhook_id']}",
                         f"/v1/jobs/{ids['job_id']}/artifacts/tuned.safetensors",
                         f"/v1/jobs/{ids['job_id']}/materializations/"
                         f"{ids['materialization_id']}"):
                assert owner.get(path).status_code == 200, path
    finally:
        for client in clients.values():
            client.close()


def test_malformed_path_ids_are_a_404_naming_the_parameter_after_the_key(
        matrix_api: Api, world: World) -> None:
    api = matrix_api
    owner = api.client_for(world.keys["owner"])
    admin = api.client_for(world.keys["admin"])
    anonymous = api.client_for(None)
    try:
        for method, template, access in _keyed_routes():
            params = _params(template)
            client = admin if access is Access.ADMIN else owner
            for param in params:
                for number, segment in enumerate(MALFORMED_SEGMENTS):
                    if method == "HEAD" and number % 3:
                        continue  # GET's answer without the body: a sample is enough
                    values = _owner_values(template, world)
                    values[param] = segment
                    path = _fill(template, values)
                    what = (method, template, param, segment)
                    if number % 3 == 0:
                        refused = _call(anonymous, method, path, template)
                        _refused_for_the_key(refused, method, 401, what)
                    response = _call(client, method, path, template)
                    _no_server_error(response, what)
                    assert response.status_code == 404, (what, response.text[:300])
                    error = _error(response, method)
                    if error and "%2F" not in segment:
                        assert error["field"] == param, (what, error)
                        assert error["code"].endswith("not_found"), (what, error)
                        assert len(response.content) < 4000, what  # the id quoted, cut short
                    elif error:
                        assert error["field"] in ("path", *params), (what, error)
    finally:
        owner.close()
        admin.close()
        anonymous.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_options_and_unserved_methods_answer_alike_for_any_id(
        matrix_api: Api, world: World) -> None:
    anonymous = matrix_api.client_for(None)
    try:
        for template in sorted({template for _, template in ROUTES}):
            theirs, unknown = _owner_values(template, world), _unknown_values(template)
            if "{path}" in template:
                continue
            answers = [anonymous.options(_fill(template, values)) for values in (theirs, unknown)]
            for answer in answers:
                assert answer.status_code == 204, (template, answer.text)
                assert "OPTIONS" in answer.headers["allow"]
                assert not _leaks(answer, world.secrets), template
            assert answers[0].headers["allow"] == answers[1].headers["allow"]
            served = set(answers[0].headers["allow"].replace(" ", "").split(","))
            for method in {"PUT", "PATCH", "DELETE", "POST"} - served:
                answer = anonymous.request(method, _fill(template, theirs))
                assert answer.status_code == 405, (method, template, answer.text)
                assert _shape(answer, theirs) == _shape(
                    anonymous.request(method, _fill(template, unknown)), unknown)
    finally:
        anonymous.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_json_body_is_not_read_before_the_key(matrix_api: Api,
                                                shared_validator: Validator) -> None:
    # FastAPI reads and parses a JSON body before a route's dependencies run. Before: no key,
    # a revoked key or a read-only one sending '{' got the body's 422 (a non-UTF-8 body, a 400
    # or 422; a body over 1 MiB, a 413) instead of its 401 or 403, on these routes only.
    api = matrix_api
    app = create_app(api.settings, dispatcher=RecordingDispatcher(), validator=shared_validator,
                     session_factory=api.sessions)
    json_routes = sorted((method, template) for method, template in app_routes(app)
                         if (method, template) in BODIES)
    assert len(json_routes) == 5, json_routes
    _, reader = make_key(api.sessions, "tests", ("read",))
    _, revoked = make_key(api.sessions, "tests")
    with api.sessions() as session:
        revoke_key(session, _key_id(api, revoked))
    values = {"job_id": UNKNOWN_IDS["job_id"], "name": "tests"}
    bodies = [b"{", b"\xff\xfe", b'{"alpha": NaN}', b"[" * 5000]
    oversize = b"{" + b" " * (2 << 20) + b"}"  # past the 1 MiB of a JSON body: was a 413
    for method, template in json_routes:
        path = _fill(template, values)
        for key, status in ((None, 401), (revoked, 401), (reader, 403)):
            with api.client_for(key) as client:
                for content in bodies + ([oversize] if key is None else []):
                    response = client.request(method, path, content=content,
                                              headers={"Content-Type": "application/json"})
                    assert response.status_code == status, (template, key, content[:5],
                                                            response.text[:200])
                    assert response.json()["error"]["field"] == "Authorization"
    # With a good key the body is read as before: the 422 names it.
    response = api.client.post("/v1/webhooks", content=b"{",
                               headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["error"]["field"] == "body"
    hook = api.client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/h"})
    assert hook.status_code == 201, hook.text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_refusals_carry_the_bearer_challenge_naming_the_error(matrix_api: Api) -> None:
    # RFC 6750 §3: a request without a key gets the bare challenge, a refused key
    # error="invalid_token", a weak one (403) error="insufficient_scope" with the scope. Before:
    # the bare challenge on every 401, and a 403 with no WWW-Authenticate at all.
    api = matrix_api
    _, reader = make_key(api.sessions, "tests", ("read",))
    realm = 'Bearer realm="rift"'
    with api.client_for(None) as anonymous:
        for headers, challenge, says in [
                ({}, realm, "send an API key as 'Authorization: Bearer <key>'"),
                ({"Authorization": "Basic dXNlcjpwdw=="}, realm,
                 "the Authorization header is not 'Bearer <key>'"),
                ({"Authorization": api.key}, realm, "the Authorization header is not"),
                ({"Authorization": f"Bearer {UNKNOWN_KEY}"}, f'{realm}, error="invalid_token"',
                 "the API key is not valid")]:
            response = anonymous.get("/v1/jobs", headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == challenge, headers
            assert says in response.json()["error"]["message"], response.text
            assert api.key not in response.text  # a key sent without its scheme is not echoed
    twice = httpx.get(f"{api.url}/v1/jobs", headers=[("Authorization", f"Bearer {api.key}")] * 2)
    assert twice.headers["www-authenticate"] == f'{realm}, error="invalid_request"'
    with api.client_for(reader) as client:
        for method, path, scope in [("POST", f"/v1/jobs/{UNKNOWN_IDS['job_id']}/cancel", "write"),
                                    ("GET", "/v1/admin/projects", "admin")]:
            response = client.request(method, path)
            assert response.status_code == 403
            assert response.headers["www-authenticate"] == (
                f'{realm}, error="insufficient_scope", scope="{scope}"')
            assert response.json()["error"]["required_scope"] == scope


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_open_routes_answer_whatever_key_is_sent(matrix_api: Api) -> None:
    # The probes, the documentation and (METRICS_TOKEN unset) the metrics ignore the API key:
    # a bad or revoked one is not a 401 there, and a good one reveals nothing more.
    _, revoked = make_key(matrix_api.sessions, "tests")
    with matrix_api.sessions() as session:
        revoke_key(session, _key_id(matrix_api, revoked))
    values = {"path": "swagger-ui/swagger-ui.css"}
    for (method, template), access in sorted(ROUTES.items()):
        if access not in (Access.OPEN, Access.OPERATOR):
            continue
        path = _fill(template, values)
        answers = []
        for key in (None, revoked, matrix_api.key):
            with matrix_api.client_for(key) as client:
                for sent in _methods(method):
                    response = client.request(sent, path)
                    # (/readyz may say 503 while the validator starts: the same to any key.)
                    assert response.status_code in (200, 503), (sent, path, key,
                                                                response.text[:200])
                    assert "www-authenticate" not in response.headers, (sent, path)
                    ready = None if path.endswith("readyz") else response.status_code
                    answers.append((sent, ready, response.headers["content-type"]))
        assert len(set(answers)) == len(_methods(method)), (path, answers)
