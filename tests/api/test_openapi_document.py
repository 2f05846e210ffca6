"""``GET /openapi.json`` as a team generating its own client (TypeScript, Go, Java) reads it:
readable, stable operation ids; every error answer declared with the shape it really has; the
headers clients need declared; and the real answers of a live API valid against the document
(status declared for the operation, body valid against its schema, declared headers sent)."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from persistence.settings import Settings
from tests.api.helpers import Api, RecordingDispatcher, digits_config, make_key, upload_checkpoint
from tests.service_fixtures import settings_from_env

pytestmark = pytest.mark.service

_ERROR_REF = "#/components/schemas/ErrorOut"
#: 422: an unknown query parameter, even on a route that declares none.
_KEYED_REFUSALS = {"401", "403", "406", "422", "429", "503"}


@pytest.fixture
def doc_api(sqlite_url: str, tmp_path: Path, start_api: Callable[..., Api]) -> Api:
    settings: Settings = settings_from_env({
        "DATABASE_URL": sqlite_url, "BROKER_URL": "memory://", "STORE_KIND": "local",
        "STORE_ROOT": str(tmp_path / "objects"), "WORK_DIR": str(tmp_path / "work"),
        "WEBHOOK_ALLOW_LIST": "127.0.0.1"})
    return start_api(settings, dispatcher=RecordingDispatcher())


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, operation) for path, item in document["paths"].items()
            for method, operation in item.items()]


def test_operation_ids_are_the_functions_names(doc_api: Api) -> None:
    # Before: FastAPI's read_job_v1_jobs__job_id__get, which a generator turns into a method
    # name and which changes whenever the path does.
    document = doc_api.client.get("/openapi.json").json()
    ids = [operation["operationId"] for _, _, operation in _operations(document)]
    assert len(ids) == len(set(ids)), sorted(ids)
    unreadable = [i for i in ids if not re.fullmatch(r"[a-z]+(_[a-z]+)*", i)
                  or "v1" in i or i.endswith(("_get", "_post", "_route"))]
    assert unreadable == []
    assert {"create_job", "read_job", "upload_checkpoint", "download_artifact"} <= set(ids)


def test_every_error_answer_is_declared_with_the_error_shape(doc_api: Api) -> None:
    document = doc_api.client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    # FastAPI's {"detail": [...]} 422 shape, which no answer of this API has.
    assert "HTTPValidationError" not in schemas
    assert schemas["ErrorOut"]["required"] == ["error"]
    assert set(schemas["ErrorDetail"]["required"]) == {"code", "message", "field"}
    problems = []
    for method, path, operation in _operations(document):
        responses = operation["responses"]
        where = f"{method.upper()} {path}"
        expected = set()
        if operation.get("security"):
            expected |= _KEYED_REFUSALS
        if any(p["in"] == "path" for p in operation.get("parameters", [])):
            expected.add("404")
        if "requestBody" in operation:
            expected |= {"400", "413", "415", "422"}
        if any(p["name"] == "cursor" for p in operation.get("parameters", [])):
            expected.add("400")
        if missing := expected - set(responses):
            problems.append(f"{where}: {sorted(missing)} undeclared")
        for status, response in responses.items():
            # A media type with no schema: a generator makes a method that returns nothing.
            problems += [f"{where} {status}: {media} has no schema"
                         for media, entry in response.get("content", {}).items()
                         if not entry.get("schema")]
            if status.startswith(("4", "5")) and path != "/v1/readyz":
                ref = response.get("content", {}).get("application/json", {}).get("schema", {})
                if ref.get("$ref") != _ERROR_REF:
                    problems.append(f"{where} {status}: body {ref or 'undeclared'}")
            headers = response.get("headers", {})
            needed = {"201": "Location", "202": "Location", "401": "WWW-Authenticate",
                      "429": "Retry-After", "503": "Retry-After"}.get(status)
            # The request header a 304 or 412 answers to, so a generated client can send it.
            condition = {"304": "If-None-Match", "412": "If-Match", "206": "Range"}.get(status)
            if condition and condition not in {p["name"] for p in operation.get("parameters", [])}:
                problems.append(f"{where} {status}: no {condition} parameter")
            if status == "200" and method == "post" and "201" in responses:
                needed = "Location"  # an Idempotency-Key replay of the 201
            if needed and path != "/v1/readyz" and not headers.get(needed, {}).get("required"):
                # Always sent: declared required, so a generated client types it as present.
                problems.append(f"{where} {status}: no required {needed} header")
    assert problems == []


def test_a_multipart_jobs_spec_part_is_declared_as_json(doc_api: Api) -> None:
    # Before: a bare string, so a generated client took a string the caller had to build.
    document = doc_api.client.get("/openapi.json").json()
    multipart = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"][
        "multipart/form-data"]
    assert multipart["encoding"]["spec"]["contentType"] == "application/json"
    ref = multipart["schema"]["properties"]["spec"]["contentSchema"]["$ref"]
    assert ref == "#/components/schemas/JobSpec"
    assert "config" in document["components"]["schemas"]["JobSpec"]["properties"]


def _mixed_enums(node: Any, where: str) -> list[str]:
    if isinstance(node, list):
        return [m for i, item in enumerate(node) for m in _mixed_enums(item, f"{where}/{i}")]
    if not isinstance(node, dict):
        return []
    found = []
    if isinstance(node.get("enum"), list) and len({type(v) for v in node["enum"]}) > 1:
        found.append(f"{where}: {node['enum']}")
    return found + [m for key, value in node.items() for m in _mixed_enums(value, f"{where}/{key}")]


def test_every_enum_has_one_json_type(doc_api: Api) -> None:
    # Before: a dataset's channels was enum ["auto", 1, 3]; openapi-python-client could make no
    # type of it and dropped DatasetSpec, RiftConfig and JobCreate: no way to create a job.
    document = doc_api.client.get("/openapi.json").json()
    assert _mixed_enums(document, "#") == []


#: Properties of answers whose values form a closed set: declared as enums, a generator makes
#: a closed type of them (a TypeScript union, Go constants) rather than a bare string.
_CLOSED = ("status", "job_status", "state", "event_type", "scopes", "events", "format", "kind",
           "stage")
#: Open sets, each saying so in its description: new kinds of event and warning come with the
#: pipeline, and an older client must keep working with them.
_OPEN = {("EventOut", "kind"), ("JobWarningOut", "stage")}


def _enumerated(schema: dict[str, Any]) -> bool:
    if "enum" in schema or "const" in schema or "$ref" in schema:
        return True
    if "items" in schema:
        return _enumerated(schema["items"])
    options = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    return bool(options) and all(_enumerated(s) for s in options)


def test_closed_sets_in_answers_are_enums(doc_api: Api) -> None:
    # Before: a materialization's, an MRC table's and an event page's job status, a key's scopes,
    # a webhook's events were bare strings, while the same values elsewhere were enums.
    document = doc_api.client.get("/openapi.json").json()
    loose = []
    for name, schema in document["components"]["schemas"].items():
        for field, member in schema.get("properties", {}).items():
            if field not in _CLOSED or not name.endswith("Out"):
                continue
            if (name, field) in _OPEN:
                if "not an enum" not in member.get("description", ""):
                    loose.append(f"{name}.{field} (open set, undescribed)")
            elif not _enumerated(member):
                loose.append(f"{name}.{field}")
    assert loose == []


class _Document:
    """Checks answers against the document: the status declared, the body valid, the declared
    Location / Retry-After / WWW-Authenticate / ETag sent."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.templates = [(re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"), path)
                          for path in document["paths"]]

    def _validator(self, schema: dict[str, Any]) -> Draft202012Validator:
        document = copy.deepcopy(self.document)
        document["components"]["schemas"]["_Probe"] = schema
        registry: Registry = Registry().with_resource(
            "urn:openapi", Resource.from_contents(document, default_specification=DRAFT202012))
        return Draft202012Validator({"$ref": "urn:openapi#/components/schemas/_Probe"},
                                    registry=registry)

    def check(self, response: httpx.Response) -> list[str]:
        request = response.request
        path = request.url.path
        template = next(t for pattern, t in self.templates if pattern.match(path))
        where = f"{request.method} {path} -> {response.status_code}"
        operation = self.document["paths"][template][request.method.lower()]
        declared = operation["responses"].get(str(response.status_code))
        if declared is None:
            return [f"{where}: status not declared"]
        problems = [f"{where}: no {name} header" for name in declared.get("headers", {})
                    if name in ("Location", "Retry-After", "WWW-Authenticate", "ETag")
                    and name not in response.headers]
        media = response.headers.get("content-type", "").split(";")[0]
        if not response.content:
            return problems
        content = declared.get("content", {})
        if media not in content:
            return [*problems, f"{where}: {media} not declared ({sorted(content)})"]
        schema = content[media].get("schema")
        if schema is not None and media == "application/json":
            problems += [f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
                         for e in self._validator(schema).iter_errors(response.json())]
        return problems


def test_real_answers_match_the_document(doc_api: Api, small_cnn_file: Path) -> None:
    api = doc_api
    spec = _Document(api.client.get("/openapi.json").json())
    answers: list[httpx.Response] = []
    client = api.client
    checkpoint = upload_checkpoint(api, small_cnn_file)
    for _ in range(2):  # 201, then the replay: 200
        answers.append(client.post("/v1/checkpoints", content=small_cnn_file.read_bytes(),
                                   params={"filename": "m.safetensors"},
                                   headers={"Content-Type": "application/octet-stream",
                                            "Idempotency-Key": "replayed"}))
    answers.append(client.get("/v1/checkpoints"))
    answers.append(client.get(f"/v1/checkpoints/{checkpoint['id']}"))
    job = client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                        "config": digits_config()})
    answers.append(job)
    job_id = job.json()["id"]
    read = client.get(f"/v1/jobs/{job_id}")
    answers += [read, client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": read.headers["ETag"]})]
    answers += [client.get("/v1/jobs"), client.get(f"/v1/jobs/{job_id}/events"),
                client.get(f"/v1/jobs/{job_id}/mrc"), client.get(f"/v1/jobs/{job_id}/artifacts"),
                client.get(f"/v1/jobs/{job_id}/report"), client.get("/v1/datasets"),
                client.get("/v1/webhooks"), client.get("/v1/usage"), client.get("/v1/healthz"),
                client.get(f"/v1/jobs/{job_id}/artifacts/model.safetensors"),
                client.post(f"/v1/jobs/{job_id}/cancel"), client.post(f"/v1/jobs/{job_id}/cancel")]
    # Refusals: unknown ids, invalid input, a wrong body type, Accept, scope, no key.
    second = client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                           "config": digits_config()})
    page = client.get("/v1/jobs", params={"limit": 1})
    answers += [second, page,
                # A cursor of another list, and a Last-Event-ID that is no event id: 400.
                client.get("/v1/checkpoints", params={"cursor": page.json()["next_cursor"]}),
                client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "x"})]
    answers += [client.get("/v1/jobs/nope"), client.get("/v1/checkpoints/nope"),
                client.get("/v1/jobs", params={"limit": 0}),
                client.get("/v1/usage", params={"nope": 1}),
                client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"], "config": {}}),
                client.post("/v1/jobs", content=b"x", headers={"Content-Type": "text/plain"}),
                client.get("/v1/jobs", headers={"Accept": "image/png"}),
                client.get("/v1/admin/projects")]
    with api.client_for(None) as anonymous:
        answers.append(anonymous.get("/v1/jobs"))
    _, admin_key = make_key(api.sessions, "ops", scopes=("admin",))
    with api.client_for(admin_key) as admin:
        answers += [admin.get("/v1/admin/projects"), admin.get("/v1/admin/workers"),
                    admin.get("/v1/admin/projects/tests"),
                    admin.get("/v1/admin/projects/tests/keys"),
                    admin.post("/v1/admin/projects/tests/keys", json={"scopes": ["read"]})]
    statuses = {response.status_code for response in answers}
    assert {200, 201, 304, 400, 401, 403, 404, 406, 409, 415, 422} <= statuses, statuses
    problems = [problem for response in answers for problem in spec.check(response)]
    assert problems == []


def test_results_webhooks_and_admin_answers_match_the_document(doc_api: Api,
                                                              small_cnn_file: Path) -> None:
    from tests.api.test_api_fuzz import dataset_npz
    from tests.api.test_request_input import succeeded_job

    api = doc_api
    spec = _Document(api.client.get("/openapi.json").json())
    client = api.client
    job_id = succeeded_job(api, small_cnn_file)
    made = client.post(f"/v1/jobs/{job_id}/materialize", json={"alpha": 0.5})
    answers = [made, client.get(f"/v1/jobs/{job_id}/materializations"),
               client.get(f"/v1/jobs/{job_id}/materializations/{made.json()['id']}"),
               client.get(f"/v1/jobs/{job_id}/curves"), client.get(f"/v1/jobs/{job_id}/mrc"),
               client.get(f"/v1/jobs/{job_id}/artifacts"), client.get(f"/v1/jobs/{job_id}/report"),
               client.get(f"/v1/jobs/{job_id}/events", params={"limit": 2}),
               client.post(f"/v1/jobs/{job_id}/mlflow-export")]
    dataset = client.post("/v1/datasets", files={"file": ("d.npz", dataset_npz())})
    hook = client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook",
                                             "events": ["job.succeeded"]})
    answers += [dataset, client.get("/v1/datasets"),
                client.get(f"/v1/datasets/{dataset.json()['id']}"),
                hook, client.get("/v1/webhooks"), client.get(f"/v1/webhooks/{hook.json()['id']}"),
                client.get(f"/v1/webhooks/{hook.json()['id']}/deliveries"),
                client.delete(f"/v1/webhooks/{hook.json()['id']}"),
                client.delete(f"/v1/datasets/{dataset.json()['id']}")]
    _, admin_key = make_key(api.sessions, "ops", scopes=("admin",))
    with api.client_for(admin_key) as admin:
        key = admin.post("/v1/admin/projects/tests/keys", json={"scopes": ["read"]})
        answers += [key, admin.get(f"/v1/admin/projects/tests/keys/{key.json()['id']}"),
                    admin.delete(f"/v1/admin/projects/tests/keys/{key.json()['id']}"),
                    admin.get("/v1/admin/projects/tests/usage"),
                    admin.patch("/v1/admin/projects/tests", json={"max_active_jobs": 7}),
                    admin.post("/v1/admin/projects", json={"name": "made"}),
                    admin.post("/v1/admin/projects", json={"name": "made"}),
                    admin.delete("/v1/admin/projects/made")]
    statuses = {response.status_code for response in answers}
    assert {200, 201, 202, 204, 409} <= statuses, statuses
    problems = [problem for response in answers for problem in spec.check(response)]
    assert problems == []
