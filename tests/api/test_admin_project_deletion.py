"""A forced project deletion while one of its jobs runs on a real Celery worker (Postgres, Redis):
the job is cancelled and its worker stops at its next batch; until it has, the deletion is
refused with 409 jobs_stopping (here with PROJECT_DELETE_WAIT_SECONDS=0, so the refusal is
seen), and the project's keys are already revoked. Then the project goes with its rows and
every stored object."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from api.dispatch import CeleryDispatcher
from persistence.models import Checkpoint, Job, Project
from tests.api.helpers import Api, make_key, upload_checkpoint
from tests.api.test_end_to_end import wait_for_job
from tests.service_fixtures import WorkerProcess, settings_from_env

pytestmark = [pytest.mark.service, pytest.mark.slow]


def test_force_deletes_a_project_whose_job_is_running(
        service_env: dict[str, str], start_api: Callable[..., Api],
        start_worker: Callable[..., WorkerProcess], digits_checkpoint_path: Path,
        digits_job_config: dict[str, Any]) -> None:
    settings = settings_from_env({**service_env, "PROJECT_DELETE_WAIT_SECONDS": "0"})
    api = start_api(settings, dispatcher=CeleryDispatcher(settings))
    worker = start_worker()
    _, admin_key = make_key(api.sessions, "ops", ("admin",))
    admin = api.client_for(admin_key)

    checkpoint = upload_checkpoint(api, digits_checkpoint_path)
    # Far more epochs than the test takes: the job is running when the deletion comes.
    config = {**digits_job_config, "finetune": {**digits_job_config["finetune"], "epochs": 200}}
    job = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                            "config": config}).json()
    wait_for_job(api, job["id"], lambda j: j["stage"] == "finetune" and j["status"] == "running")

    stopping = admin.delete("/v1/admin/projects/tests?force=true")
    assert stopping.status_code == 409, stopping.text
    error = stopping.json()["error"]
    assert (error["code"], error["field"], error["job_ids"]) == ("jobs_stopping", "force",
                                                                 [job["id"]])
    assert api.client.get("/v1/usage").status_code == 401  # its keys were revoked first
    deadline = time.monotonic() + 120
    while (answer := admin.delete("/v1/admin/projects/tests?force=true")).status_code == 409:
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.2)
    assert answer.status_code == 204, answer.text

    with api.sessions() as session:
        assert session.execute(select(Project.name)).scalars().all() == ["ops"]
        for model in (Job, Checkpoint):
            assert session.execute(select(func.count()).select_from(model)).scalar_one() == 0
    # The checkpoint, the records of the MRC stage (mrc.json, not an artifact) and the rest.
    assert list(settings.build_object_store().list_objects()) == []
    assert admin.get("/v1/admin/projects/tests/usage").status_code == 404
    assert "Traceback" not in worker.log(), worker.log()[-3000:]
    admin.close()
