"""One MLflow export of a job at a time (``worker.tasks.export_if_configured`` under the named
lock ``mlflow-export:<job id>``): an export that finds another of the same job still running
waits for it, and past its wait says so in the job's export warning, naming the request, rather
than logging a second run. Before, two exports at once (the one after success and a re-export,
or two re-exports) each found no run of the job and each logged one."""

from __future__ import annotations

from pathlib import Path

import pytest

from persistence import jobs
from persistence.named_locks import held
from persistence.records import create_checkpoint
from persistence.settings import Settings
from tests.persistence.helpers import SPEC
from worker import tasks
from worker.runtime import WorkerResources


def test_an_export_waits_for_another_of_the_same_job_and_says_so_past_its_wait(
        sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(database_url=sqlite_url, store_root=tmp_path / "objects",
                        work_dir=tmp_path / "work", mlflow_tracking_uri="http://127.0.0.1:9",
                        mlflow_http_timeout_seconds=1, mlflow_http_max_retries=0)
    resources = WorkerResources(settings)
    with resources.session() as session:
        checkpoint = create_checkpoint(
            session, filename="model.safetensors", size=1, sha256="0" * 64,
            format="safetensors", storage_key="checkpoints/x.safetensors", num_tensors=1,
            num_parameters=1)
        job, _ = jobs.create_job(session, spec=SPEC, checkpoint_id=checkpoint.id)
    monkeypatch.setattr(tasks, "EXPORT_LOCK_WAIT_REQUESTS", 0.5)  # 0.5 s with 1-s requests
    with held(resources.session, settings.work_dir / "locks", f"mlflow-export:{job.id}",
              timeout=1):
        tasks.export_if_configured(resources, job.id, request_event_id=7)
    with resources.session() as session:
        warning = jobs.list_events(session, job.id)[-1]
    assert warning.kind == "warning" and warning.payload["request_event_id"] == 7
    message = warning.payload["message"]
    assert "another export of this job was still running after 0.5 s" in message, message
    assert f"POST /v1/jobs/{job.id}/mlflow-export" in message
