"""Another project's resources look exactly like missing ones, on every route of the app.

The routes are read from the app's OpenAPI schema, so a route added later is checked too: a
route with path parameters is called with another project's ids and must answer like it does
for an id that does not exist; a route without any must be listed in COLLECTION_ROUTES with the
test that covers it, or this test fails.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.helpers import Api
from tests.reliability.conftest import create_job, tiny_npz, upload

pytestmark = [pytest.mark.service]

#: Routes without an id, and where their per-project behaviour is tested.
COLLECTION_ROUTES = {
    ("post", "/v1/checkpoints"): "uploads are recorded as the caller's (checked below)",
    ("post", "/v1/datasets"): "uploads are recorded as the caller's (checked below)",
    ("get", "/v1/checkpoints"): "tests/api/test_upload_listing.py::"
                                "test_the_callers_uploads_newest_first_page_by_page",
    ("get", "/v1/datasets"): "tests/api/test_upload_listing.py::"
                             "test_the_callers_uploads_newest_first_page_by_page",
    ("post", "/v1/jobs"): "test_jobs_cannot_use_another_projects_inputs",
    ("get", "/v1/jobs"): "test_lists_show_only_the_callers_jobs",
    ("get", "/v1/admin/projects"): "admin routes: test_admin_cli.py",
    ("post", "/v1/admin/projects"): "admin routes: test_admin_cli.py",
    ("get", "/v1/admin/workers"): "admin only, no project's resources: tests/api/test_workers.py",
    ("get", "/v1/admin/audit-events"): "admin only, every project's: "
                                       "tests/api/test_audit_events.py; tests/api/"
                                       "test_auth_matrix.py refuses keys without admin",
    ("post", "/v1/webhooks"): "test_webhooks_belong_to_the_callers_project",
    ("get", "/v1/webhooks"): "test_webhooks_belong_to_the_callers_project",
    ("get", "/v1/usage"): "test_usage.py: test_each_project_sees_its_own_usage",
    ("get", "/v1/audit-events"): "tests/api/test_audit_events.py::"
                                 "test_job_and_checkpoint_changes_are_recorded_once_with_the_key",
    ("get", "/metrics"): "operators' Prometheus metrics, no resource ids (METRICS_TOKEN guards it)",
    ("get", "/v1/healthz"): "no key needed",
    ("get", "/v1/readyz"): "no key needed",
}
#: Valid bodies for the routes that need one, so the answer is about the ids, not the body.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/jobs/{job_id}/materialize"): {"alpha": 0.5},
}
#: Routes whose ids are project names or key ids, for global admins (test_admin_cli.py).
ADMIN_PREFIX = "/v1/admin/"
MISSING_ID = "0" * 32
#: A webhook target on this machine (allow-listed in the reliability settings; never called).
HOOK_URL = "http://127.0.0.1:9/hook"


def _routes(api: Api) -> list[tuple[str, str]]:
    schema = api.client.get("/openapi.json").json()
    return [(method, path) for path, operations in schema["paths"].items()
            for method in operations]


def _fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)


def _shape(response: httpx.Response, ids: dict[str, str]) -> tuple[int, str]:
    # The answer with every id replaced by a placeholder: equal shapes mean nothing tells the
    # two cases apart.
    text = response.text
    for value in ids.values():
        text = text.replace(value, "<id>")
    return response.status_code, text


def test_every_route_hides_another_projects_resources(
        api: Api, clients: Callable[..., httpx.Client], small_cnn_file: Path) -> None:
    owner = api.client
    checkpoint = upload(owner, "/v1/checkpoints", "m.safetensors", small_cnn_file.read_bytes())
    dataset = upload(owner, "/v1/datasets", "d.npz", tiny_npz())
    job = create_job(owner, checkpoint["id"])
    assert job.status_code == 201, job.text
    hook = owner.post("/v1/webhooks", json={"url": HOOK_URL})
    assert hook.status_code == 201, hook.text
    theirs = {"checkpoint_id": checkpoint["id"], "dataset_id": dataset["id"],
              "job_id": job.json()["id"], "webhook_id": hook.json()["id"],
              "materialization_id": "4" * 32, "name": "tuned.safetensors"}
    missing = {"checkpoint_id": MISSING_ID, "dataset_id": "1" * 32, "job_id": "2" * 32,
               "webhook_id": "3" * 32, "materialization_id": "4" * 32,
               "name": "tuned.safetensors"}
    stranger = clients("other-team")

    checked = []
    for method, path in _routes(api):
        if "{" not in path:
            assert (method, path) in COLLECTION_ROUTES, (
                f"new route {method.upper()} {path}: add its cross-project test")
            continue
        if path.startswith(ADMIN_PREFIX):
            continue
        body = BODIES.get((method, path))
        answer = stranger.request(method.upper(), _fill(path, theirs), json=body)
        baseline = stranger.request(method.upper(), _fill(path, missing), json=body)
        assert answer.status_code == 404, (method, path, answer.text)
        assert _shape(answer, theirs) == _shape(baseline, missing), (method, path)
        checked.append((method, path))
    assert len(checked) >= 12  # reads, deletes, cancel, events, results, artifacts

    # Nothing of the owner's was touched by the stranger's DELETE and cancel attempts.
    assert owner.get(f"/v1/checkpoints/{checkpoint['id']}").status_code == 200
    assert owner.get(f"/v1/datasets/{dataset['id']}").status_code == 200
    mine = owner.get(f"/v1/jobs/{theirs['job_id']}").json()
    assert mine["status"] == "queued" and mine["cancel_requested"] is False
    assert owner.get(f"/v1/webhooks/{theirs['webhook_id']}").status_code == 200


def test_webhooks_belong_to_the_callers_project(
        api: Api, clients: Callable[..., httpx.Client]) -> None:
    stranger = clients("other-team")
    mine = api.client.post("/v1/webhooks", json={"url": HOOK_URL})
    theirs = stranger.post("/v1/webhooks", json={"url": HOOK_URL})
    assert mine.status_code == theirs.status_code == 201
    listed = api.client.get("/v1/webhooks").json()["items"]
    assert [w["id"] for w in listed] == [mine.json()["id"]]
    assert [w["id"] for w in stranger.get("/v1/webhooks").json()["items"]] == \
        [theirs.json()["id"]]


def test_jobs_cannot_use_another_projects_inputs(
        api: Api, clients: Callable[..., httpx.Client], small_cnn_file: Path) -> None:
    checkpoint = upload(api.client, "/v1/checkpoints", "m.safetensors",
                        small_cnn_file.read_bytes())
    dataset = upload(api.client, "/v1/datasets", "d.npz", tiny_npz())
    stranger = clients("other-team")
    # Their checkpoint: the same answer as an id that does not exist (the weights stay theirs).
    answer = create_job(stranger, checkpoint["id"])
    baseline = create_job(stranger, MISSING_ID)
    assert answer.status_code == baseline.status_code == 422
    assert answer.json()["error"]["code"] == baseline.json()["error"]["code"] == \
        "unknown_checkpoint"
    # Their dataset, with a checkpoint of one's own.
    own = upload(stranger, "/v1/checkpoints", "m.safetensors", small_cnn_file.read_bytes())
    config: dict[str, Any] = {
        "architecture": {"name": "small_cnn", "num_classes": 10},
        "dataset": {"name": "npz"}, "device": "cpu"}
    answer = create_job(stranger, own["id"], dataset_id=dataset["id"], config=config)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "unknown_dataset"
    assert create_job(api.client, checkpoint["id"], dataset_id=dataset["id"],
                      config=config).status_code == 201


def test_lists_show_only_the_callers_jobs(
        api: Api, clients: Callable[..., httpx.Client], small_cnn_file: Path) -> None:
    checkpoint = upload(api.client, "/v1/checkpoints", "m.safetensors",
                        small_cnn_file.read_bytes())
    stranger = clients("other-team")
    theirs = upload(stranger, "/v1/checkpoints", "m.safetensors", small_cnn_file.read_bytes())
    mine = {create_job(api.client, checkpoint["id"]).json()["id"] for _ in range(3)}
    other = create_job(stranger, theirs["id"]).json()["id"]
    listed = api.client.get("/v1/jobs", params={"limit": 100}).json()["items"]
    assert {j["id"] for j in listed} == mine
    assert [j["id"] for j in stranger.get("/v1/jobs").json()["items"]] == [other]
    # Idempotency keys are per project: the same key makes each project its own job.
    first = create_job(api.client, checkpoint["id"], labels={"k": "v"})
    headers = {"Idempotency-Key": "same-key"}
    a = api.client.post("/v1/jobs", headers=headers, json={
        "checkpoint_id": checkpoint["id"], "config": first.json()["config"]})
    b = stranger.post("/v1/jobs", headers=headers, json={
        "checkpoint_id": theirs["id"], "config": first.json()["config"]})
    assert a.status_code == b.status_code == 201 and a.json()["id"] != b.json()["id"]
