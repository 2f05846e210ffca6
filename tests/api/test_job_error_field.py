"""A failed job's ``error`` names the config setting its library error blames (``field``, as the
error responses do): in ``GET /v1/jobs/{id}`` and the list, the report page's failure line, both
Python clients' models and the job's webhook message. Before, the job row had no column for it
(``RiftError.field`` reached the failure events only): ``error`` had ``code`` and ``message``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from persistence import jobs, stages
from persistence.models import utcnow
from persistence.webhooks import job_payload
from rift_client import AsyncRiftClient, RiftClient
from tests.api.helpers import Api, digits_config, upload_checkpoint

pytestmark = pytest.mark.service

MESSAGE = "the data's values lie outside attack.domain [0, 1]: set attack.domain"


def _failed_jobs(api: Api, checkpoint: Path) -> tuple[str, str]:
    """Two failed jobs: one whose error blames ``attack.domain``, one whose blames nothing."""
    uploaded = upload_checkpoint(api, checkpoint)
    ids = []
    for _ in range(2):
        created = api.client.post("/v1/jobs", json={"checkpoint_id": uploaded["id"],
                                                    "config": digits_config()})
        assert created.status_code == 201, created.text
        ids.append(str(created.json()["id"]))
    with api.sessions() as session:
        stages.fail_job(session, ids[0], "invalid_config", MESSAGE, field="attack.domain")
        stages.fail_job(session, ids[1], "worker_error", "out of memory")
    return ids[0], ids[1]


def test_a_failed_jobs_error_names_the_setting_it_blames(api: Api, small_cnn_file: Path) -> None:
    blamed, unblamed = _failed_jobs(api, small_cnn_file)
    expected = {"code": "invalid_config", "message": MESSAGE, "field": "attack.domain"}
    got = api.client.get(f"/v1/jobs/{blamed}")
    assert got.status_code == 200 and got.json()["error"] == expected, got.json()["error"]
    # None blamed: the key is there, null (as in the error responses).
    assert api.client.get(f"/v1/jobs/{unblamed}").json()["error"] == {
        "code": "worker_error", "message": "out of memory", "field": None}
    listed = {j["id"]: j["error"] for j in api.client.get("/v1/jobs").json()["items"]}
    assert listed[blamed] == expected and listed[unblamed]["field"] is None

    page = api.client.get(f"/v1/jobs/{blamed}/report").text
    assert "invalid_config: " in page and "(field: attack.domain)" in page
    assert "(field:" not in api.client.get(f"/v1/jobs/{unblamed}/report").text

    with RiftClient(api.url, api_key=api.key) as client:
        error = client.get_job(blamed).error
        assert error is not None and error.field == "attack.domain"
        plain = client.get_job(unblamed).error
        assert plain is not None and plain.field is None

    async def read() -> Any:
        async with AsyncRiftClient(api.url, api_key=api.key) as client:
            return await client.get_job(blamed)

    assert asyncio.run(read()).error.field == "attack.domain"

    with api.sessions() as session:
        data = job_payload(jobs.get_job(session, blamed), "job.failed", utcnow())["data"]
    assert data["error"] == expected
