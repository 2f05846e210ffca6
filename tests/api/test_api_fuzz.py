"""No 500 from user input, and every 4xx names what is at fault, checked over the whole API.

From the app's own OpenAPI document, every operation gets a valid request on existing resources
(a job, checkpoint, dataset, materialization, webhook, project and key made first), then that
request with one parameter at a time replaced by a hostile value (``tests/api/api_fuzz.py``:
wrong types, null, empty, 10k characters, NUL, invalid UTF-8, lone surrogates, negative, huge and
fractional numbers, nesting, unknown and missing fields, a query parameter twice, multipart parts
missing, doubled or swapped). Each answer must be below 500, and a 4xx must be the API's JSON
error naming the parameter or field at fault (or a limit), with a status the document declares
for the operation (a generated client has no branch for another). The server must stay healthy.

The sample is seeded and bounded, so the same requests go every run; a new route or parameter is
fuzzed without a line here, and a route missing from the document fails the coverage check.
"""

from __future__ import annotations

import io
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from api.main import create_app
from api.validation import Validator
from persistence.settings import Settings
from tests.api.api_fuzz import (
    Case,
    Operation,
    json_body_cases,
    multipart,
    multipart_cases,
    operations,
    parameter_cases,
    unresolved_refs,
)
from tests.api.helpers import (
    Api,
    RecordingDispatcher,
    digits_config,
    make_key,
    unthrottled_settings,
    upload_checkpoint,
    varied_images,
)
from tests.api.test_request_input import api_routes, succeeded_job

pytestmark = pytest.mark.service

SEED = 20261126
#: Hostile values tried per parameter and per body field (of the 20-odd of each list).
VALUES_PER_PARAMETER = 6
VALUES_PER_FIELD = 4
#: At most this many requests per operation (a job spec has many fields).
CASES_PER_OPERATION = 120


#: Operations whose valid request is still refused, with the status: the job is marked
#: succeeded without running, so it has no artifact files, and a finished job cannot be
#: cancelled, and this API has no MLFLOW_TRACKING_URI to export to (each answer names the field
#: or setting: the mutations still reach the parameters first).
BASELINE_REFUSED = {("GET", "/v1/jobs/{job_id}/artifacts/{name}"): 404,
                    ("POST", "/v1/jobs/{job_id}/cancel"): 409,
                    ("POST", "/v1/jobs/{job_id}/mlflow-export"): 409}


#: The one answer that names another field than the mutated one, rightly: an upload route
#: takes a raw body of any well-formed media type but form, JSON and multipart as the file
#: itself, so a multipart body sent as text/plain is a file that is no checkpoint or dataset
#: (422 on file). A JSON or malformed type is a 415 on Content-Type.
RAW_UPLOAD_ROUTES = ("/v1/checkpoints", "/v1/datasets")
RAW_FILE_TYPE = b"text/plain"


@pytest.fixture
def fuzz_api(api_settings: Settings, start_api: Callable[..., Api]) -> Api:
    """The API with loopback webhook targets allowed (so a webhook body reaches the database)
    and no request-rate or active-job limit in the way of a few thousand requests (the valid
    ones among them create jobs)."""
    settings = unthrottled_settings(api_settings, DEFAULT_MAX_ACTIVE_JOBS="100000")
    return start_api(settings, dispatcher=RecordingDispatcher())


def dataset_npz() -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=varied_images((40, 8, 8, 3)),
                        y=np.random.default_rng(0).integers(0, 4, 40))
    return buffer.getvalue()


@dataclass
class Resources:
    """Existing resources for every path parameter, and valid bodies."""

    path_values: dict[str, str]
    checkpoint: bytes
    dataset: bytes


def _upload_dataset(api: Api) -> str:
    dataset = api.client.post("/v1/datasets", files={"file": ("d.npz", dataset_npz())})
    assert dataset.status_code == 201, dataset.text
    return str(dataset.json()["id"])


def _register_webhook(api: Api) -> str:
    # One registration per URL: a new URL each time one is made again.
    hook = api.client.post("/v1/webhooks", json={"url": f"http://127.0.0.1:9/{uuid.uuid4().hex}"})
    assert hook.status_code == 201, hook.text
    return str(hook.json()["id"])


def _fuzz_project_key(api: Api, admin: httpx.Client) -> str:
    # A project of its own for the admin routes, so that DELETE /admin/projects/{name} with an
    # accepted query (?force=TRUE) deletes nothing the other operations use.
    make_key(api.sessions, "fuzz")
    return str(admin.get("/v1/admin/projects/fuzz/keys").json()["items"][-1]["id"])


def make_resources(api: Api, admin: httpx.Client, small_cnn_file: Path) -> Resources:
    job_id = succeeded_job(api, small_cnn_file)
    made = api.client.post(f"/v1/jobs/{job_id}/materialize", json={"alpha": 0.5})
    assert made.status_code == 202, made.text
    return Resources(
        path_values={"job_id": job_id,
                     "checkpoint_id": upload_checkpoint(api, small_cnn_file)["id"],
                     "dataset_id": _upload_dataset(api), "materialization_id": made.json()["id"],
                     "webhook_id": _register_webhook(api), "name": "fuzz",
                     "key_id": _fuzz_project_key(api, admin)},
        checkpoint=small_cnn_file.read_bytes(), dataset=dataset_npz())


def remake(deleted: str, resources: Resources, api: Api, admin: httpx.Client,
           small_cnn_file: Path) -> tuple[str, str]:
    """Make again the resource an accepted DELETE of ``deleted`` (its template) removed;
    returns its (old id, new id)."""
    values = resources.path_values
    if deleted.endswith("{key_id}") or deleted.endswith("{name}"):
        name, new = "key_id", _fuzz_project_key(api, admin)
    elif deleted.startswith("/v1/checkpoints"):
        name, new = "checkpoint_id", upload_checkpoint(api, small_cnn_file)["id"]
    elif deleted.startswith("/v1/datasets"):
        name, new = "dataset_id", _upload_dataset(api)
    elif deleted.startswith("/v1/jobs"):
        name, new = "job_id", succeeded_job(api, small_cnn_file)
    else:
        name, new = "webhook_id", _register_webhook(api)
    old, values[name] = values[name], new
    return old, new


def valid_json_body(op: Operation, resources: Resources) -> Any:
    """A body each JSON operation accepts (named by its schema)."""
    ref = op.body_types()["application/json"]["schema"].get("$ref", "")
    bodies: dict[str, Any] = {
        "JobCreate": {"checkpoint_id": resources.path_values["checkpoint_id"],
                      "config": digits_config(), "labels": {"team": "a"}},
        "MaterializeIn": {"alpha": 0.25},
        "WebhookCreate": {"url": "http://127.0.0.1:9/other", "description": "d"},
        "ProjectCreate": {"name": "fuzz-new", "max_active_jobs": 5},
        "ProjectLimitsIn": {"max_active_jobs": 50},
        "KeyCreate": {"name": "k", "scopes": ["read"]},
    }
    return bodies[ref.rsplit("/", 1)[-1]]


def cases_of(op: Operation, resources: Resources, rng: random.Random) -> list[Case]:
    """The valid request of ``op`` first, then a bounded, seeded sample of its mutations."""
    values = dict(resources.path_values)
    if "/artifacts/" in op.template:
        values["name"] = "mrc.csv"
    path = op.template.format(**values)
    query: list[tuple[str, str]] = []
    base = Case(op.method, path, query)
    found: list[Case] = []
    types = op.body_types()
    if "application/json" in types:
        body = valid_json_body(op, resources)
        base = Case(op.method, path, query, {}, json.dumps(body).encode(), "application/json")
        found += json_body_cases(op, base, body, rng, VALUES_PER_FIELD)
    if "multipart/form-data" in types:
        if op.template == "/v1/jobs":
            spec = json.dumps({"config": digits_config()}).encode()
            parts = [("checkpoint", b"m.safetensors", resources.checkpoint), ("spec", None, spec)]
        else:
            content = resources.dataset if "datasets" in op.template else resources.checkpoint
            name = b"d.npz" if "datasets" in op.template else b"m.safetensors"
            parts = [("file", name, content)]
        content_bytes, content_type = multipart(parts)
        multipart_base = Case(op.method, path, query, {}, content_bytes, content_type)
        if "application/json" not in types:
            base = multipart_base
        found += multipart_cases(multipart_base, parts, rng)
    found += parameter_cases(op, base, values, rng, VALUES_PER_PARAMETER)
    if len(found) > CASES_PER_OPERATION:
        found = rng.sample(found, CASES_PER_OPERATION)
    return [base, *found]


def _close_enough(field: str, target: str) -> bool:
    """Whether an error's field names the mutated parameter: the same, a part of it (a
    mutated ``config.attack`` found wrong at ``config.attack.eps``) or a whole holding it."""
    field_parts, target_parts = field.lower().split("."), target.lower().split(".")
    shorter = min(len(field_parts), len(target_parts))
    return field_parts[:shorter] == target_parts[:shorter]


def _names_target(case: Case, error: dict[str, Any]) -> bool:
    """Whether an error names the parameter ``case`` mutated (any error does for a mutation
    of the body as a whole, checked apart)."""
    if case.target is None:
        return True
    # A rule about two fields names one and quotes the other ("give both 'mean' and 'std'").
    if f"'{case.target.rsplit('.', 1)[-1]}'" in str(error.get("message")):
        return True
    if (case.path in RAW_UPLOAD_ROUTES and case.headers.get("Content-Type") == RAW_FILE_TYPE
            and error.get("field") == "file"):
        return True
    # A 422 lists every field at fault in "fields"; the mutated one must be among them.
    fields = [str(f) for f in error.get("fields") or [error.get("field")]]
    return any(_close_enough(f, case.target) or f in ("body", "Content-Type", "path")
               for f in fields)


def fault(case: Case, response: httpx.Response) -> str | None:
    """What is wrong with the answer to ``case``, or None."""
    status = response.status_code
    if status >= 500:
        return f"{status}: {response.text[:300]}"
    if status < 400:
        return None
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"{status} without the JSON error body: {response.text[:200]}"
    named = error.get("field")
    limit = any("limit" in key for key in error)
    if not named and not limit:
        return f"{status} naming no field: {error}"
    if status in (400, 404, 422) and named and not _names_target(case, error):
        return f"{status} names {named!r}, not {case.target!r}: {error.get('message')}"
    if status in (400, 422) and case.target is None and named not in ("body", "Content-Type"):
        return f"{status} names {named!r} for a body-wide fault: {error.get('message')}"
    return None


def send(client: httpx.Client, case: Case) -> httpx.Response | None:
    headers: dict[str, Any] = {}
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    headers.update(case.headers)  # a mutated Content-Type wins
    try:
        return client.request(case.method, case.url(), content=case.content, headers=headers)
    except httpx.LocalProtocolError:  # a header value h11 will not send: nothing to learn
        return None


def _refusal(response: httpx.Response) -> tuple[int, Any]:
    return response.status_code, response.json()["error"].get("field")


def _mutation_names_a_real_resource(client: httpx.Client, op: Operation, case: Case,
                                     response: httpx.Response) -> bool:
    """A 404 naming a path parameter after the mutated one is right when the mutated value
    happens to name a resource that exists (an earlier case created project ``true``): then
    the path up to the mutated segment, or the listing after it, is found."""
    if response.status_code != 404 or case.target is None:
        return False
    segments = op.template.split("/")
    marker = "{" + case.target + "}"
    named = response.json()["error"].get("field")
    if marker not in segments or "{" + str(named) + "}" not in segments[
            segments.index(marker) + 1:]:
        return False
    at = segments.index(marker) + 1
    prefix = "/".join(case.path.split("/")[:at])
    # The resource itself, or its listing of what the template names next (…/true/keys).
    return any(client.get(url).status_code == 200
               for url in (prefix, f"{prefix}/{segments[at]}"))


def fuzz_operation(op: Operation, client: httpx.Client, resources: Resources,
                   rng: random.Random,
                   remake_deleted: Callable[[str], tuple[str, str]]) -> tuple[list[str], int]:
    """Send ``op``'s valid request and its mutations; returns the faults found and the number
    of requests sent."""
    cases = cases_of(op, resources, rng)
    failures: list[str] = []
    refused: tuple[int, Any] | None = None
    sent = 0
    for index, case in enumerate(cases):
        if index == 0 and op.method == "DELETE":
            continue  # the valid request would delete the resource
        response = send(client, case)
        if response is None:
            continue
        sent += 1
        problem = fault(case, response)
        if index == 0 and response.status_code >= 400 and problem is None:
            refused = _refusal(response)
            if BASELINE_REFUSED.get((op.method, op.template)) != response.status_code:
                problem = f"the valid request failed: {response.text[:200]}"
        elif problem is not None and response.status_code < 500 and refused == _refusal(response):
            problem = None  # refused as the valid request is, for the same reason
        elif problem is not None and _mutation_names_a_real_resource(client, op, case, response):
            problem = None  # the mutated segment names what exists: a later one is at fault
        if problem is not None:
            failures.append(f"{op.method} {op.template} [{case.target}: {case.note}] {problem}")
        elif str(response.status_code) not in op.spec["responses"]:
            # A client generated from the document has no branch for an undeclared status.
            failures.append(f"{op.method} {op.template} [{case.target}: {case.note}] "
                            f"{response.status_code} is not declared in the document")
        if op.method == "DELETE" and response.status_code < 300:
            old, new = remake_deleted(op.template)
            for later in cases[index + 1:]:
                later.path = later.path.replace(old, new)
    return failures, sent


def test_every_ref_of_the_openapi_document_resolves(api: Api) -> None:
    # Before: POST /v1/jobs' JSON body was "$ref: #/components/schemas/JobCreate", a schema the
    # document did not hold (Swagger UI showed "Could not resolve reference").
    document = api.client.get("/openapi.json").json()
    assert unresolved_refs(document) == []


def test_no_input_gets_a_500_or_a_4xx_naming_nothing(fuzz_api: Api, small_cnn_file: Path,
                                                    shared_validator: Validator) -> None:
    api = fuzz_api
    document = api.client.get("/openapi.json").json()
    ops = operations(document)
    # The document is the whole API: every route is in it.
    app = create_app(api.settings, dispatcher=RecordingDispatcher(), validator=shared_validator)
    # (An included router keeps its routes nested, their paths without the outer prefix.)
    documented = {(op.method, op.template) for op in ops}
    missing = [(method, route.path) for route in api_routes(app.routes)
               for method in (route.methods or set()) - {"HEAD"} if route.path not in ("/docs", "/redoc")
               and not any(m == method and t.endswith(route.path) for m, t in documented)]
    assert missing == []

    _, admin_key = make_key(api.sessions, "tests", ("admin",))
    rng = random.Random(SEED)
    failures: list[str] = []
    sent = 0
    with api.client_for(admin_key) as client:
        resources = make_resources(api, client, small_cnn_file)
        # DELETEs last: an accepted one removes a resource the others need.
        for op in sorted(ops, key=lambda op: op.method == "DELETE"):
            found, count = fuzz_operation(op, client, resources, rng,
                                          lambda t: remake(t, resources, api, client,
                                                           small_cnn_file))
            failures += found
            sent += count
            health = client.get("/v1/healthz")
            assert health.status_code == 200, (op.template, health.text)
        assert client.get("/v1/jobs").status_code == 200
    assert failures == [], f"{len(failures)} of {sent}:\n" + "\n".join(failures[:80])
    assert sent > 1000, sent
