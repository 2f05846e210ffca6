"""Per-project limits at their exact boundary, on SQLite and Postgres: what fits the limit to the
byte is admitted, one byte more is refused, naming the limit, the use and the refused size."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from persistence.models import Project
from tests.api.helpers import Api, digits_config, error_of

pytestmark = [pytest.mark.service]


def _set_limits(api: Api, **limits: int | None) -> None:
    with api.sessions() as session:
        session.execute(update(Project).where(Project.id == api.project_id).values(**limits))
        session.commit()


def _multipart(api: Api, name: str, data: bytes) -> httpx.Response:
    return api.client.post("/v1/checkpoints", files={"file": (name, data)})


def test_a_multipart_upload_that_fills_the_byte_quota_exactly_is_stored(
        api: Api, small_cnn_file: Path) -> None:
    # Before: the check before the body is read took the multipart body's whole Content-Length
    # (the file and ~200 bytes of framing) for the file, so a file that fit to the byte was a
    # 413 "storing <file + framing> more bytes", and so was any file within the framing's size
    # of the quota.
    data = small_cnn_file.read_bytes()
    _set_limits(api, max_stored_bytes=len(data) - 1)
    refused = _multipart(api, "a.safetensors", data)
    assert refused.status_code == 413, refused.text
    error = error_of(refused)
    assert (error["code"], error["field"], error["limit"], error["used"], error["incoming"]) == (
        "quota_exceeded", "max_stored_bytes", len(data) - 1, 0, len(data))
    assert "Retry-After" not in refused.headers  # a byte quota does not free itself
    assert api.stored_files() == [] and api.scratch_files() == []

    _set_limits(api, max_stored_bytes=len(data))
    stored = _multipart(api, "a.safetensors", data)
    assert stored.status_code == 201, stored.text
    usage = api.client.get("/v1/usage").json()["stored_bytes"]
    assert (usage["used"], usage["limit"], usage["checkpoints"]) == (len(data), len(data),
                                                                     len(data))

    _set_limits(api, max_stored_bytes=2 * len(data) - 1)
    again = _multipart(api, "b.safetensors", data)
    assert again.status_code == 413, again.text
    assert (error_of(again)["used"], error_of(again)["incoming"]) == (len(data), len(data))
    assert len(api.stored_files()) == 1


def test_a_job_sent_with_its_checkpoint_over_the_byte_quota_names_the_usage_as_it_is(
        api: Api, small_cnn_file: Path) -> None:
    # Before: the 413 counted the checkpoint sent with the job (not stored) in "used", so its
    # "used" was not GET /v1/usage's, and "incoming" left the checkpoint out.
    data = small_cnn_file.read_bytes()
    reserved = 2 * len(data)  # the digits job's tuned weights and its candidate's θ_FT
    _set_limits(api, max_stored_bytes=len(data) + reserved - 1)
    refused = api.client.post(
        "/v1/jobs", files={"checkpoint": ("m.safetensors", data)},
        data={"spec": json.dumps({"config": digits_config()})})
    assert refused.status_code == 413, refused.text
    error = error_of(refused)
    usage = api.client.get("/v1/usage").json()["stored_bytes"]
    assert (error["field"], error["used"], error["incoming"], error["limit"]) == (
        "max_stored_bytes", usage["used"], len(data) + reserved, usage["limit"])
    assert error["used"] + error["incoming"] == error["limit"] + 1
    assert api.stored_files() == []

    _set_limits(api, max_stored_bytes=len(data) + reserved)
    created = api.client.post(
        "/v1/jobs", files={"checkpoint": ("m.safetensors", data)},
        data={"spec": json.dumps({"config": digits_config()})})
    assert created.status_code == 201, created.text
    assert api.client.get("/v1/usage").json()["stored_bytes"]["used"] == len(data) + reserved
