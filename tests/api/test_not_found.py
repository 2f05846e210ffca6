"""A missing resource is a 404 whose code names the resource (``<resource>_not_found``) and
whose field names the path parameter, on every route: clients branch on the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from persistence.models import Job
from tests.api.helpers import Api, digits_config, error_of, make_key, upload_checkpoint

pytestmark = pytest.mark.service

MISSING = "0123456789abcdef0123456789abcdef"


def test_every_missing_resource_names_itself(api: Api, small_cnn_file: Path) -> None:
    checkpoint = upload_checkpoint(api, small_cnn_file)
    job_id = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                               "config": digits_config()}).json()["id"]
    with api.sessions() as session:  # succeeded: a missing artifact is then a 404, not a 409
        job = session.get(Job, job_id)
        assert job is not None
        job.status = "succeeded"
        session.commit()
    _, admin_key = make_key(api.sessions, "ops", ("admin",))
    cases = [
        ("GET", f"/v1/checkpoints/{MISSING}", "checkpoint_not_found", "checkpoint_id"),
        ("DELETE", f"/v1/checkpoints/{MISSING}", "checkpoint_not_found", "checkpoint_id"),
        # Before: GET answered code not_found where DELETE answered dataset_not_found.
        ("GET", f"/v1/datasets/{MISSING}", "dataset_not_found", "dataset_id"),
        ("DELETE", f"/v1/datasets/{MISSING}", "dataset_not_found", "dataset_id"),
        ("GET", f"/v1/jobs/{MISSING}", "job_not_found", "job_id"),
        ("GET", f"/v1/jobs/{MISSING}/artifacts", "job_not_found", "job_id"),
        # Before: code not_found.
        ("GET", f"/v1/jobs/{job_id}/artifacts/tuned.safetensors", "artifact_not_found", "name"),
        ("GET", f"/v1/jobs/{job_id}/materializations/{MISSING}", "materialization_not_found",
         "materialization_id"),
        ("GET", f"/v1/webhooks/{MISSING}", "webhook_not_found", "webhook_id"),
        ("GET", "/v1/admin/projects/nope/keys", "project_not_found", "name"),
        ("DELETE", f"/v1/admin/projects/tests/keys/{MISSING}", "key_not_found", "key_id"),
    ]
    with api.client_for(admin_key) as admin:
        for method, path, code, field in cases:
            client = admin if path.startswith("/v1/admin") else api.client
            response = client.request(method, path)
            assert response.status_code == 404, (path, response.text)
            error = error_of(response)
            assert (error["code"], error["field"]) == (code, field), (path, response.text)
