"""The audit trail over HTTP (SQLite and Postgres): each change a key makes is recorded once,
naming the acting key by id and prefix (never its secret) and the request id, in the change's
own transaction: an idempotent replay, a refused change (409, 422) or a repeat that changes
nothing records nothing. A project's events are its keys' alone; the admin's list keeps a
deleted project's trail."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from persistence.models import ApiKey
from persistence.settings import Settings
from tests.api.helpers import (
    Api,
    RecordingDispatcher,
    digits_config,
    error_of,
    make_key,
    upload_checkpoint,
)
from tests.api.test_api_fuzz import dataset_npz
from tests.api.test_request_input import succeeded_job

pytestmark = pytest.mark.service


def events(client: httpx.Client, path: str = "/v1/audit-events", **params: Any
           ) -> list[dict[str, Any]]:
    """Every event the list answers (all pages, newest first)."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = client.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        found += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return found


def key_row(api: Api, key: str) -> ApiKey:
    prefix = key.split("_")[1]
    with api.sessions() as session:
        return session.execute(select(ApiKey).where(ApiKey.prefix == prefix)).scalar_one()


def test_job_and_checkpoint_changes_are_recorded_once_with_the_key(
        api: Api, small_cnn_file: Path) -> None:
    checkpoint = upload_checkpoint(api, small_cnn_file)
    body = {"checkpoint_id": checkpoint["id"], "config": digits_config()}
    first = api.client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "audit-1"})
    assert first.status_code == 201, first.text
    replay = api.client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "audit-1"})
    assert replay.status_code == 200, replay.text
    refused = api.client.post("/v1/jobs", json={**body, "config": digits_config(device="tpu")})
    assert refused.status_code == 422, refused.text
    job_id = first.json()["id"]
    cancelled = api.client.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert api.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409  # already ended
    # The checkpoint is still named by the job: 409, nothing recorded.
    assert api.client.delete(f"/v1/checkpoints/{checkpoint['id']}").status_code == 409
    deleted = api.client.delete(f"/v1/jobs/{job_id}")
    assert deleted.status_code == 204, deleted.text
    assert api.client.delete(f"/v1/jobs/{job_id}").status_code == 404
    assert api.client.delete(f"/v1/checkpoints/{checkpoint['id']}").status_code == 204

    found = events(api.client, limit=1)  # paged one by one: the cursor walks them all
    assert [(e["action"], e["resource_id"]) for e in found] == [
        ("checkpoint.deleted", checkpoint["id"]), ("job.deleted", job_id),
        ("job.cancelled", job_id), ("job.created", job_id),
        ("checkpoint.uploaded", checkpoint["id"])]
    row = key_row(api, api.key)
    for event in found:
        assert (event["project_id"], event["actor"], event["actor_key_id"],
                event["actor_key_prefix"]) == (api.project_id, "api_key", row.id, row.prefix)
    by_action = {e["action"]: e for e in found}
    assert by_action["job.created"]["request_id"] == first.headers["x-request-id"]
    assert by_action["job.deleted"]["request_id"] == deleted.headers["x-request-id"]
    assert by_action["job.deleted"]["resource_kind"] == "job"
    secret = api.key.split("_", 2)[2]
    assert secret not in api.client.get("/v1/audit-events").text

    assert [e["action"] for e in events(api.client, action="job.cancelled")] == ["job.cancelled"]
    assert [e["action"] for e in events(api.client, resource_id=checkpoint["id"])] == [
        "checkpoint.deleted", "checkpoint.uploaded"]
    unknown = api.client.get("/v1/audit-events", params={"action": "job.renamed"})
    assert unknown.status_code == 422 and "action" in unknown.text
    for odd in ("a\x00b", "é", "x" * 65):  # no id: a 422 naming it (Postgres refuses NUL)
        answer = api.client.get("/v1/audit-events", params={"resource_id": odd})
        assert answer.status_code == 422 and error_of(answer)["field"] == "resource_id"

    _, other_key = make_key(api.sessions, "other")
    with api.client_for(other_key) as other:
        assert events(other) == []
        assert events(other, resource_id=job_id) == []
        # A cursor of this project's list is refused on the other's, not read.
        cursor = api.client.get("/v1/audit-events", params={"limit": 1}).json()["next_cursor"]
        foreign = other.get("/v1/audit-events", params={"cursor": cursor})
        assert foreign.status_code == 400 and error_of(foreign)["field"] == "cursor"


def test_admin_changes_are_recorded_and_outlive_the_project(api: Api) -> None:
    _, admin_key = make_key(api.sessions, "ops", ("admin",))
    admin_row = key_row(api, admin_key)
    with api.client_for(admin_key) as admin:
        assert admin.post("/v1/admin/projects", json={"name": "vision"}).status_code == 201
        taken = admin.post("/v1/admin/projects", json={"name": "vision"})
        assert taken.status_code == 409
        limits = admin.patch("/v1/admin/projects/vision", json={"max_active_jobs": 3})
        assert limits.status_code == 200, limits.text
        # The same limits again change nothing: nothing recorded.
        assert admin.patch("/v1/admin/projects/vision",
                           json={"max_active_jobs": 3}).status_code == 200
        refused = admin.post("/v1/admin/projects/vision/keys", json={"scopes": ["root"]})
        assert refused.status_code == 422
        made = admin.post("/v1/admin/projects/vision/keys", json={"name": "ci"})
        assert made.status_code == 201, made.text
        new_key = made.json()
        assert admin.delete(f"/v1/admin/projects/vision/keys/{new_key['id']}").status_code == 200
        assert admin.delete(f"/v1/admin/projects/vision/keys/{new_key['id']}").status_code == 200
        project_id = admin.get("/v1/admin/projects/vision").json()["id"]
        assert admin.delete("/v1/admin/projects/vision").status_code == 204

        trail = events(admin, "/v1/admin/audit-events", project_id=project_id)
        assert [e["action"] for e in trail] == [
            "project.deleted", "key.revoked", "key.created", "project.limits_changed",
            "project.created"]
        assert all(e["actor_key_id"] == admin_row.id for e in trail)
        assert all(e["actor_key_prefix"] == admin_row.prefix for e in trail)
        by_action = {e["action"]: e for e in trail}
        assert by_action["project.limits_changed"]["details"]["limits"] == {
            "max_active_jobs": {"from": None, "to": 3}}
        assert by_action["key.created"]["resource_id"] == new_key["id"]
        assert new_key["key"].split("_", 2)[2] not in admin.get("/v1/admin/audit-events").text
        assert by_action["project.deleted"]["details"]["keys"] == 1
        # Across projects: the tests project's key made nothing, so these are all of them.
        assert len(events(admin, "/v1/admin/audit-events")) == len(trail)

    # A project's own key never sees the admin's list.
    assert api.client.get("/v1/admin/audit-events").status_code == 403


def test_uploads_and_webhooks_are_recorded_once_per_change(
        api_settings: Settings, start_api: Callable[..., Api]) -> None:
    api = start_api(api_settings.model_copy(update={"webhook_allow_list": "127.0.0.1"}),
                    dispatcher=RecordingDispatcher())
    upload = {"files": {"file": ("d.npz", dataset_npz())}, "headers": {"Idempotency-Key": "d-1"}}
    dataset = api.client.post("/v1/datasets", **upload)  # type: ignore[arg-type]
    assert dataset.status_code == 201, dataset.text
    assert api.client.post("/v1/datasets", **upload).status_code == 200  # type: ignore[arg-type]
    bad = api.client.post("/v1/datasets", files={"file": ("d.npz", b"not an npz")})
    assert bad.status_code == 422
    dataset_id = dataset.json()["id"]
    assert api.client.delete(f"/v1/datasets/{dataset_id}").status_code == 204

    hook = {"url": "http://127.0.0.1:9/hook?token=s3cr3t", "events": ["job.failed"]}
    made = api.client.post("/v1/webhooks", json=hook, headers={"Idempotency-Key": "w-1"})
    assert made.status_code == 201, made.text
    again = api.client.post("/v1/webhooks", json=hook, headers={"Idempotency-Key": "w-1"})
    assert again.status_code == 200
    taken = api.client.post("/v1/webhooks", json=hook)  # the same URL: 409, nothing recorded
    assert taken.status_code == 409
    webhook_id = made.json()["id"]
    assert api.client.delete(f"/v1/webhooks/{webhook_id}").status_code == 204

    found = events(api.client)
    assert [(e["action"], e["resource_id"]) for e in found] == [
        ("webhook.deleted", webhook_id), ("webhook.created", webhook_id),
        ("dataset.deleted", dataset_id), ("dataset.uploaded", dataset_id)]
    text = api.client.get("/v1/audit-events").text
    # Neither the webhook's signing secret nor its URL (which may carry a token) is kept.
    assert made.json()["secret"] not in text and "s3cr3t" not in text


def test_materialization_and_mlflow_requests_are_recorded_when_they_queue_work(
        api_settings: Settings, start_api: Callable[..., Api], small_cnn_file: Path,
        tmp_path: Path) -> None:
    api = start_api(api_settings.model_copy(update={
        "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}),
        dispatcher=RecordingDispatcher())
    queued = api.client.post("/v1/jobs", json={"checkpoint_id": upload_checkpoint(
        api, small_cnn_file)["id"], "config": digits_config()}).json()["id"]
    # Refused while the job is queued: nothing recorded.
    assert api.client.post(f"/v1/jobs/{queued}/materialize",
                           json={"alpha": 0.5}).status_code == 409
    assert api.client.post(f"/v1/jobs/{queued}/mlflow-export").status_code == 409
    job_id = succeeded_job(api, small_cnn_file)
    first = api.client.post(f"/v1/jobs/{job_id}/materialize", json={"alpha": 0.5})
    assert first.status_code == 202, first.text
    # The same α again: answered with the queued row, no new work, nothing recorded.
    assert api.client.post(f"/v1/jobs/{job_id}/materialize",
                           json={"alpha": 0.5}).status_code == 200
    assert api.client.post(f"/v1/jobs/{job_id}/mlflow-export").status_code == 202

    found = events(api.client, resource_id=first.json()["id"])
    assert [e["action"] for e in found] == ["materialization.requested"]
    assert found[0]["details"] == {"job_id": job_id, "alpha": 0.5, "evaluate": False}
    assert [e["resource_id"] for e in events(api.client, action="mlflow_export.requested")] == [
        job_id]


def test_a_job_the_broker_did_not_take_leaves_no_trail(api: Api, small_cnn_file: Path) -> None:
    checkpoint = upload_checkpoint(api, small_cnn_file)
    api.dispatcher.broker_down = True
    # The job row is written, then removed when its message cannot be sent (503): its event
    # goes with it, and so does the multipart request's own checkpoint's.
    down = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                             "config": digits_config()})
    assert down.status_code == 503, down.text
    multipart = api.client.post("/v1/jobs", files={
        "checkpoint": ("c.safetensors", small_cnn_file.read_bytes()),
        "spec": (None, json.dumps({"config": digits_config()}))})
    assert multipart.status_code == 503, multipart.text
    assert [(e["action"], e["resource_id"]) for e in events(api.client)] == [
        ("checkpoint.uploaded", checkpoint["id"])]
