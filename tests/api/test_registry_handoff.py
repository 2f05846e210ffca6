"""A job's results taken into a model registry, as an MLOps engineer would, through the real API
and a real Celery worker that exports to MLflow (a SQLite tracking store, the registry in it):

- every weights file served (``tuned``, ``finetuned``, ``tuned@α``) says in its own header what
  it is (architecture, number of classes, the config and its SHA-256, θ_AT's SHA-256, the rift
  version, the job); it loads into the architecture it names with plain safetensors + torch;
- every artifact's listed SHA-256 and size are those of the bytes served;
- ``tuned@α`` is exactly θ_α = lerp(θ_AT, θ_FT, α) of the uploaded checkpoint and the served
  ``finetuned.safetensors`` (recomputed here), α = 0 the upload and α = 1 θ_FT bit for bit;
- the MLflow run and model version carry the job, project, labels and the header's digests, and
  exporting the job again gives the same run and version.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.api.helpers import Api, upload_checkpoint, wait_for_end
from tests.service_fixtures import WorkerProcess

pytestmark = [pytest.mark.service, pytest.mark.slow]

#: What a registry needs from the weights file alone.
REGISTRY_KEYS = {"architecture", "num_classes", "config", "config_sha256", "checkpoint_sha256",
                 "rift_version", "job_id", "kind", "alpha"}


def _header(content: bytes) -> dict[str, str]:
    size = int.from_bytes(content[:8], "little")
    return dict(json.loads(content[8:8 + size]).get("__metadata__", {}))


def _materialized(api: Api, job_id: str, alpha: float, worker: WorkerProcess) -> bytes:
    made = api.client.post(f"/v1/jobs/{job_id}/materialize", json={"alpha": alpha})
    assert made.status_code in (200, 202), made.text
    row = made.json()
    deadline = time.monotonic() + 120
    while row["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.2)
        row = api.client.get(row["url"]).json()
    assert row["status"] == "succeeded", (row["error"], worker.log()[-3000:])
    return bytes(api.client.get(row["artifact_url"]).content)


def _exported(api: Api, job_id: str, worker: WorkerProcess) -> dict[str, Any]:
    """The job's mlflow_exported event (it follows the job's success)."""
    deadline = time.monotonic() + 120
    while True:
        events = api.client.get(f"/v1/jobs/{job_id}/events", params={"limit": 500}).json()
        for event in events["items"]:
            if event["kind"] == "mlflow_exported":
                return dict(event["payload"])
            assert not (event["kind"] == "warning" and event["payload"].get("stage") == "export"), (
                event, worker.log()[-3000:])
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.2)


def test_a_jobs_weights_and_export_carry_what_a_registry_needs(
        celery_api: Api, start_worker: Callable[..., WorkerProcess], tmp_path: Path,
        digits_checkpoint_path: Path, digits_job_config: dict[str, Any]) -> None:
    import safetensors.torch
    import torch
    from mlflow.tracking import MlflowClient

    from rift import __version__
    from rift.config import RiftConfig
    from rift.models import build_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    worker = start_worker(MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT="rift/registry ü",
                          MLFLOW_ARTIFACT_LOCATION=(tmp_path / "mlartifacts").as_uri())
    api = celery_api
    checkpoint = upload_checkpoint(api, digits_checkpoint_path)
    labels = {"team": "vision ü", "run/kind.v-1": "nightly <b> &amp; \"q\""}
    created = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                                "config": digits_job_config, "labels": labels})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    job = wait_for_end(api, job_id, (worker,))
    assert job["status"] == "succeeded", (job["error"], worker.log()[-3000:])

    served: dict[str, bytes] = {}
    for artifact in api.client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]:
        content = api.client.get(artifact["url"]).content
        assert hashlib.sha256(content).hexdigest() == artifact["sha256"], artifact["name"]
        assert len(content) == artifact["size"], artifact["name"]
        served[artifact["name"]] = content
    manifest = json.loads(served["manifest.json"])
    assert manifest["checkpoint_sha256"] == checkpoint["sha256"] == hashlib.sha256(
        digits_checkpoint_path.read_bytes()).hexdigest()

    theta_at = safetensors.torch.load_file(digits_checkpoint_path)
    theta_ft = safetensors.torch.load(served["finetuned.safetensors"])
    files = {"tuned.safetensors": served["tuned.safetensors"],
             "finetuned.safetensors": served["finetuned.safetensors"],
             **{f"tuned@{alpha}": _materialized(api, job_id, alpha, worker)
                for alpha in (0.0, 0.37, 1.0)}}
    tuned_header = _header(served["tuned.safetensors"])
    for name, content in files.items():
        header = _header(content)
        # Before: tuned held config, kind, alpha, module; tuned@α not even the config.
        wanted = REGISTRY_KEYS - {"alpha"} if name == "finetuned.safetensors" else REGISTRY_KEYS
        assert wanted <= set(header), (name, sorted(header))
        assert header["checkpoint_sha256"] == checkpoint["sha256"], name
        assert header["config_sha256"] == hashlib.sha256(header["config"].encode()).hexdigest()
        assert header["config"] == tuned_header["config"], name  # one config text per job
        assert header["rift_version"] == __version__ and header["job_id"] == job_id
        config = RiftConfig.model_validate_json(header["config"])
        assert config.model_dump(mode="json") == manifest["config"]
        assert (header["architecture"], header["num_classes"]) == ("small_cnn", "10")
        # Loaded as a user would: build what the header names, load the tensors strictly.
        model = build_model(config.architecture, in_channels=1, image_size=8)
        model.load_state_dict(safetensors.torch.load(content), strict=True)
    assert _header(files["tuned@0.37"])["alpha"] == "0.37"

    # θ_α recomputed from the upload and the served θ_FT: exact, end points bit for bit.
    for alpha in (0.0, 0.37, 1.0):
        weights = safetensors.torch.load(files[f"tuned@{alpha}"])
        assert set(weights) == set(theta_at) == set(theta_ft)
        for key, start in theta_at.items():
            if alpha in (0.0, 1.0) or not start.is_floating_point():
                expected = theta_ft[key] if alpha == 1.0 else start
            else:
                expected = torch.lerp(start.float(), theta_ft[key].float(), alpha).to(start.dtype)
            assert weights[key].dtype == expected.dtype and torch.equal(weights[key], expected), (
                alpha, key)

    exported = _exported(api, job_id, worker)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(exported["run_id"])
    assert run.info.run_name == f"rift-{job_id}" and run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["rift.job_id"] == job_id and tags["rift.project_id"] == api.project_id
    assert {key: tags[f"rift.label.{key}"] for key in labels} == labels
    assert run.data.params["finetune.lr"] == str(digits_job_config["finetune"]["lr"])
    assert float(run.data.params["chosen_alpha"]) == job["chosen_alpha"]
    version = client.get_model_version(exported["model"], exported["version"])
    assert version.run_id == run.info.run_id
    assert version.tags["config_sha256"] == tuned_header["config_sha256"]
    assert version.tags["checkpoint_sha256"] == checkpoint["sha256"]
    assert version.tags["project_id"] == api.project_id
    registered = Path(client.download_artifacts(run.info.run_id, "weights/tuned.safetensors",
                                                str(tmp_path)))
    assert registered.read_bytes() == served["tuned.safetensors"]

    # Exported again (a redelivered finishing task): the same run and version, no second one.
    from worker.mlflow_export import MlflowTarget, export_job

    again = export_job(MlflowTarget(uri, "rift/registry ü", exported["model"]), api.sessions,
                       api.settings.build_object_store(), job_id, tmp_path / "reexport")
    assert (again.run_id, again.model_version) == (exported["run_id"], exported["version"])
    experiment = client.get_experiment_by_name("rift/registry ü")
    assert len(client.search_runs([experiment.experiment_id])) == 1



def test_an_export_to_a_server_that_is_down_warns_without_its_password(
        celery_api: Api, start_worker: Callable[..., WorkerProcess], tmp_path: Path,
        digits_checkpoint_path: Path, digits_job_config: dict[str, Any]) -> None:
    """The job stays succeeded and its warning says why, without the tracking URI's password:
    MLflow quotes the request's whole URL in its error, which went into the event every key of
    the project reads ("API request to http://rift:s3cret%21@127.0.0.1:1/api/2.0/...")."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    worker = start_worker(MLFLOW_TRACKING_URI=f"http://rift:s3cret%21@127.0.0.1:{port}",
                          MLFLOW_HTTP_MAX_RETRIES="0")
    api = celery_api
    checkpoint = upload_checkpoint(api, digits_checkpoint_path)
    created = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                                "config": digits_job_config})
    job_id = created.json()["id"]
    assert wait_for_end(api, job_id, (worker,))["status"] == "succeeded", worker.log()[-3000:]
    deadline = time.monotonic() + 120
    while True:
        events = api.client.get(f"/v1/jobs/{job_id}/events", params={"limit": 500}).json()
        warned = [e["payload"]["message"] for e in events["items"]
                  if e["kind"] == "warning" and e["payload"].get("stage") == "export"]
        if warned:
            break
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.2)
    [message] = warned
    assert message.startswith("the job succeeded but its export to MLflow failed: "
                              "MlflowException: API request to http://***@127.0.0.1:"), message
    assert "s3cret" not in message and "rift:" not in message
    assert api.client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
