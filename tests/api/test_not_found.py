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


def test_a_path_with_a_trailing_slash_is_a_404_naming_the_path_without_it(api: Api) -> None:
    # Before: Starlette's 307 to the path without the slash, its Location an absolute URL built
    # from the request's Host (wrong behind a proxy), which few clients follow for a DELETE.
    for method, path, meant in [
        ("GET", "/v1/jobs/", "/v1/jobs"),
        ("POST", "/v1/jobs/", "/v1/jobs"),
        ("DELETE", f"/v1/jobs/{MISSING}/", f"/v1/jobs/{MISSING}"),
        ("GET", f"/v1/jobs/{MISSING}/events/", f"/v1/jobs/{MISSING}/events"),
        ("GET", "/v1/webhooks/", "/v1/webhooks"),
        ("GET", "/v1//checkpoints", "/v1/checkpoints"),
        ("GET", "/healthz/", "/healthz"),
    ]:
        response = api.client.request(method, path, follow_redirects=False)
        assert response.status_code == 404, (method, path, response.text)
        assert "location" not in response.headers
        error = error_of(response)
        assert (error["code"], error["field"], error["path_meant"]) == (
            "not_found", "path", meant), (path, response.text)
        assert repr(path) in error["message"] and repr(meant) in error["message"]
    # A path that exists in no form names no other.
    unknown = error_of(api.client.get("/v1/nothing/"))
    assert "path_meant" not in unknown and "/docs" in unknown["message"]


def test_an_empty_path_segment_names_the_parameter_left_empty(api: Api) -> None:
    # The README's curl lines with JOB_ID empty (its job refused): before, "use
    # '/v1/jobs/events'", a path whose job id is "events", and DELETE "use '/v1/jobs'", a 405.
    cases: list[tuple[str, str, str | None]] = [
        ("GET", "/v1/jobs//events", "job_id"),
        ("POST", "/v1/jobs//cancel", "job_id"),
        ("HEAD", "/v1/jobs//mrc", "job_id"),
        ("GET", "/v1/jobs//artifacts/tuned.safetensors", "job_id"),
        ("GET", f"/v1/jobs/{MISSING}/materializations/", None),  # the list: path_meant
        ("DELETE", "/v1/checkpoints/", "checkpoint_id"),
        ("DELETE", "/v1/jobs/", "job_id"),
        ("DELETE", "/v1/webhooks/", "webhook_id"),
    ]
    for method, path, field in cases:
        response = api.client.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        if method == "HEAD" or field is None:
            continue
        error = error_of(response)
        assert (error["code"], error["field"]) == ("not_found", field), (path, response.text)
        assert "path_meant" not in error and f"{{{field}}}" in error["message"], response.text
    # A trailing slash on a path that serves the method keeps its path_meant, and says the
    # parameter could be what is missing.
    listed = error_of(api.client.get("/v1/jobs/"))
    assert (listed["field"], listed["path_meant"]) == ("path", "/v1/jobs")
    assert "or give {job_id}" in listed["message"]


def test_v1_given_twice_names_the_path_meant(api: Api) -> None:
    # RIFT_API_URL=http://host:8000/v1: the clients add /v1, so every request went to /v1/v1/...
    # and was "no route '/v1/v1/jobs': see /docs for the API's paths".
    for method, path in [("GET", "/v1/v1/jobs"), ("POST", f"/v1/v1/jobs/{MISSING}/cancel")]:
        error = error_of(api.client.request(method, path))
        assert (error["code"], error["field"], error["path_meant"]) == (
            "not_found", "path", path[len("/v1"):]), error
        assert "/v1 is given twice" in error["message"] and "base URL" in error["message"]
    assert "path_meant" not in error_of(api.client.get("/v1/v1/nothing"))


def test_a_near_miss_of_a_built_in_dataset_says_which(api: Api) -> None:
    # `riftctl datasets get cifar`: before, the built-ins listed but none suggested, where
    # the same word as a job's dataset.name got "did you mean 'cifar10'?".
    for name, meant in [("cifar", "cifar10"), ("CIFAR-100", "cifar100"), ("Digits", "digits")]:
        error = error_of(api.client.get(f"/v1/datasets/{name}"))
        assert (error["code"], error["field"]) == ("dataset_not_found", "dataset_id")
        assert error["message"].endswith(f"; did you mean '{meant}'?"), error
    assert "did you mean" not in error_of(api.client.get(f"/v1/datasets/{MISSING}"))["message"]


def test_a_built_in_dataset_given_as_dataset_id_says_to_name_it_in_the_config(
        api: Api, small_cnn_file: Path) -> None:
    # `riftctl jobs create --dataset digits` (GET /v1/datasets/digits answers, so it looks like
    # an id). Before: "no dataset with id 'digits' (upload one with POST /v1/datasets, ...)".
    checkpoint = upload_checkpoint(api, small_cnn_file)
    response = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                                 "dataset_id": "digits",
                                                 "config": digits_config()})
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert (error["code"], error["field"]) == ("unknown_dataset", "dataset_id")
    assert error["message"].startswith("'digits' is a built-in dataset, not an upload: name it "
                                       "in config.dataset.name and send no dataset_id"), error


def test_deleting_a_built_in_dataset_says_it_is_built_in(api: Api) -> None:
    response = api.client.delete("/v1/datasets/digits")
    assert response.status_code == 404, response.text
    error = error_of(response)
    assert (error["code"], error["field"]) == ("dataset_not_found", "dataset_id")
    # Before: "no dataset with id 'digits'", as if the built-in dataset were missing.
    assert "'digits' is a built-in dataset, not an upload" in error["message"]
    assert api.client.get("/v1/datasets/digits").status_code == 200  # still there
