"""``POST /v1/jobs/{id}/mlflow-export`` through the real API, a real Celery worker and a real
MLflow store (SQLite, the registry in it): a job whose export after its success failed (its
tracking server was down) is exported by asking again, once the server is reachable; asking
once more gives back the same run and version, no second run. Before, such a job stayed
unexported for good (the route did not exist: 404)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from persistence.settings import Settings
from tests.api.helpers import Api, upload_checkpoint, wait_for_end
from tests.client.helpers import run_riftctl
from tests.service_fixtures import WorkerProcess, settings_from_env

pytestmark = [pytest.mark.service, pytest.mark.slow]


def _outcome(api: Api, job_id: str, after: int, worker: WorkerProcess) -> dict[str, Any]:
    """The job's first export outcome after event ``after``: mlflow_exported or an export
    warning."""
    deadline = time.monotonic() + 120
    while True:
        page = api.client.get(f"/v1/jobs/{job_id}/events",
                              params={"after": after, "limit": 500}).json()
        for event in page["items"]:
            if event["kind"] == "mlflow_exported" or (
                    event["kind"] == "warning" and event["payload"].get("stage") == "export"):
                return dict(event)
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.2)


def _api_with_mlflow(service_env: dict[str, str], start_api: Callable[..., Api],
                     uri: str | None) -> Api:
    from api.dispatch import CeleryDispatcher

    settings: Settings = settings_from_env(service_env).model_copy(
        update={"mlflow_tracking_uri": uri})
    return start_api(settings, dispatcher=CeleryDispatcher(settings))


def test_a_job_whose_export_failed_is_exported_when_asked_again(
        service_env: dict[str, str], start_api: Callable[..., Api],
        start_worker: Callable[..., WorkerProcess], tmp_path: Path,
        digits_checkpoint_path: Path, digits_job_config: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    from rift_client import AsyncRiftClient, RiftClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    api = _api_with_mlflow(service_env, start_api, uri)
    with socket.socket() as probe:  # a port nothing listens on: the tracking server is down
        probe.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{probe.getsockname()[1]}"
    first = start_worker(MLFLOW_TRACKING_URI=down, MLFLOW_HTTP_MAX_RETRIES="0")
    checkpoint = upload_checkpoint(api, digits_checkpoint_path)
    created = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                                "config": digits_job_config})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    assert wait_for_end(api, job_id, (first,))["status"] == "succeeded", first.log()[-3000:]
    failed = _outcome(api, job_id, 0, first)
    assert failed["kind"] == "warning", failed
    first.stop()

    # Asked while no worker runs: riftctl --wait gives up at its --timeout (exit 4).
    cli = run_riftctl(["-o", "json", "jobs", "export-mlflow", job_id, "--wait", "--timeout",
                       "0.5"], url=api.url, api_key=api.key, home=tmp_path)
    assert cli.exit_code == 4, (cli.stdout, cli.stderr)
    assert cli.error()["code"] == "wait_timeout"
    # Two more requests queued behind it; taken by a worker without MLFLOW_TRACKING_URI: a
    # warning for each saying so, not silence, each naming its request.
    first_request = api.client.post(f"/v1/jobs/{job_id}/mlflow-export").json()["event_id"]
    second_request = api.client.post(f"/v1/jobs/{job_id}/mlflow-export").json()["event_id"]
    bare = start_worker()
    with RiftClient(api.url, api_key=api.key) as rift:
        unset = rift.wait_mlflow_export(job_id, second_request, 120, poll_interval=0.2)
    assert not unset.exported and "no MLFLOW_TRACKING_URI" in str(unset.message), unset
    # Its own outcome, not the first request's (which came after the second's request event).
    events = api.client.get(f"/v1/jobs/{job_id}/events", params={"limit": 500}).json()["items"]
    by_id = {event["id"]: event for event in events}
    assert by_id[unset.event_id]["payload"]["request_event_id"] == second_request
    answered = [event["payload"].get("request_event_id") for event in events
                if event["kind"] == "warning" and event["id"] > first_request]
    assert first_request in answered and answered.index(first_request) < answered.index(
        second_request), answered
    cli = run_riftctl(["jobs", "export-mlflow", job_id, "--wait"], url=api.url, api_key=api.key,
                      home=tmp_path)
    assert cli.exit_code == 1, (cli.stdout, cli.stderr)
    assert "was not exported to MLflow" in cli.stdout and "no MLFLOW_TRACKING_URI" in cli.stdout
    bare.stop()

    # The tracking server is back (here: the SQLite store the API is configured with).
    worker = start_worker(MLFLOW_TRACKING_URI=uri, MLFLOW_ARTIFACT_LOCATION=(
        tmp_path / "mlartifacts").as_uri())
    asked = api.client.post(f"/v1/jobs/{job_id}/mlflow-export")
    assert asked.status_code == 202, asked.text
    body = asked.json()
    assert body["status"] == "queued" and asked.headers["Location"] == body["url"]
    assert body["url"] == f"/v1/jobs/{job_id}/events?after={body['event_id']}"
    exported = _outcome(api, job_id, body["event_id"], worker)
    assert exported["kind"] == "mlflow_exported", (exported, worker.log()[-3000:])
    payload = exported["payload"]

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(payload["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["rift.job_id"] == job_id
    assert client.get_model_version(payload["model"], payload["version"]).run_id == payload["run_id"]

    assert payload["request_event_id"] == body["event_id"]
    made = (payload["run_id"], payload["model"], payload["version"])

    # Asked again, by the sync and async clients and riftctl: the same run and version each time.
    with RiftClient(api.url, api_key=api.key) as rift:
        again = rift.export_to_mlflow(job_id)
        outcome = rift.wait_mlflow_export(job_id, again.event_id, 120, poll_interval=0.2)
    assert outcome.exported and outcome.request_event_id == again.event_id
    assert (outcome.run_id, outcome.model, outcome.version) == made

    async def ask() -> tuple[str | None, str | None, str | None]:
        async with AsyncRiftClient(api.url, api_key=api.key) as rift:
            queued = await rift.export_to_mlflow(job_id)
            done = await rift.wait_mlflow_export(job_id, queued.event_id, 120, poll_interval=0.2)
            return done.run_id, done.model, done.version

    import asyncio
    assert asyncio.run(ask()) == made
    cli = run_riftctl(["-o", "json", "jobs", "export-mlflow", job_id, "--wait"], url=api.url,
                      api_key=api.key, home=tmp_path)
    assert cli.exit_code == 0, cli.stderr
    answer = json.loads(cli.stdout)
    assert answer["outcome"]["exported"] is True
    assert (answer["outcome"]["run_id"], answer["outcome"]["model"],
            answer["outcome"]["version"]) == made
    assert _outcome(api, job_id, answer["event_id"], worker)["payload"]["run_id"] == made[0]

    experiment = client.get_experiment_by_name("rift")
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert len(client.search_model_versions(f"name = '{payload['model']}'")) == 1
    assert api.client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"


def test_what_cannot_be_exported_again_is_refused_naming_why(
        service_env: dict[str, str], start_api: Callable[..., Api], tmp_path: Path,
        digits_checkpoint_path: Path, digits_job_config: dict[str, Any]) -> None:
    # No worker: the job stays queued.
    api = _api_with_mlflow(service_env, start_api, f"sqlite:///{tmp_path / 'mlflow.db'}")
    checkpoint = upload_checkpoint(api, digits_checkpoint_path)
    job_id = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                               "config": digits_job_config}).json()["id"]
    refused = api.client.post(f"/v1/jobs/{job_id}/mlflow-export")
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["field"]) == ("job_not_succeeded", "job_id")
    assert "queued" in error["message"]
    assert api.client.post("/v1/jobs/job_nope/mlflow-export").status_code == 404

    unset = _api_with_mlflow(service_env, start_api, None)
    refused = unset.client.post(f"/v1/jobs/{job_id}/mlflow-export")
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["field"]) == ("mlflow_not_configured", "MLFLOW_TRACKING_URI")
