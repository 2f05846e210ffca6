"""One real job through the service (Postgres, Redis, a Celery worker process) and what comes with
it: the request id from the API's logs to the worker's JSON logs, Prometheus metrics of the API
and of the worker parsed with the Prometheus text parser, manifest.json and the chart artifacts,
the MLflow export read back from a real SQLite tracking store, the report page, and weights at
α = 0 and α = 1 made afterwards, bit-identical to θ_AT and θ_FT. The checkpoint is the kind a
robust-training script writes: a model and its EMA (the job tunes the EMA, named in
config.checkpoint_entry) beside an EasyDict of arguments that only its own code could rebuild."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.dispatch import CeleryDispatcher
from persistence.logs import configure_logging
from tests.api.helpers import Api, digits_config, upload_checkpoint
from tests.service_fixtures import WorkerProcess, settings_from_env, start_worker_serving_metrics

pytestmark = [pytest.mark.service, pytest.mark.slow]

REQUEST_ID = "req-e2e-0001"
JOB_TIMEOUT_S = 300.0


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page: (name, sorted labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def wait_until(api: Api, url: str, done: Callable[[dict[str, Any]], bool],
               timeout: float = JOB_TIMEOUT_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = dict(api.client.get(url).json())
        if done(body):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


class _EasyDict(dict):  # type: ignore[type-arg]
    """Like easydict.EasyDict (not installed): the service never imports it."""


def _model_and_ema(digits: Path, path: Path) -> Path:
    """The digits weights as the EMA, other weights as the model, training arguments beside."""
    import torch

    from rift.checkpoints import load_state_dict

    ema = load_state_dict(digits)
    model = {k: v + 0.25 if v.is_floating_point() else v for k, v in ema.items()}
    torch.save({"model": model, "model_ema": ema, "epoch": 30,
                "args": _EasyDict(lr=0.1, arch="small_cnn")}, path)
    return path


def test_job_with_logs_metrics_manifest_report_mlflow_and_materialize(
        service_env: dict[str, str], start_worker: Callable[..., WorkerProcess],
        start_api: Callable[..., Api], digits_checkpoint_path: Path, tmp_path: Path) -> None:
    import safetensors.torch
    import torch
    from mlflow.tracking import MlflowClient

    from rift.checkpoints import load_state_dict

    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    extra = {"LOG_FORMAT": "json",
             "MLFLOW_TRACKING_URI": mlflow_uri, "MLFLOW_EXPERIMENT": "rift-e2e",
             "MLFLOW_MODEL_NAME": "rift-e2e-model",
             "MLFLOW_ARTIFACT_LOCATION": (tmp_path / "mlruns").as_uri()}
    worker, port = start_worker_serving_metrics(start_worker, **extra)
    settings = settings_from_env({**service_env, **extra, "WORKER_METRICS_PORT": str(port)})
    api = start_api(settings, dispatcher=CeleryDispatcher(settings))
    api_logs = io.StringIO()
    handler = configure_logging("json", stream=api_logs)
    try:
        checkpoint = upload_checkpoint(
            api, _model_and_ema(digits_checkpoint_path, tmp_path / "ema.pt"))
        assert checkpoint["entries"] == ["model", "model_ema"]
        config = digits_config(attack={"eps": 0.1, "step_size": 0.025, "steps": 3},
                               evaluation={"max_examples": 120}, checkpoint_entry="model_ema")
        created = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                                    "config": config},
                                  headers={"X-Request-ID": REQUEST_ID})
        assert created.status_code == 201, created.text
        assert created.headers["x-request-id"] == REQUEST_ID
        job_id = created.json()["id"]
        generated = api.client.get(f"/v1/jobs/{job_id}").headers["x-request-id"]
        assert generated and generated != REQUEST_ID

        estimates = []
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while True:
            job = api.client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] == "running" and any(s["status"] == "done" for s in job["stages"]):
                estimates.append(job["estimated_finish"])
            if job["status"] not in ("queued", "running"):
                break
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        assert job["status"] == "succeeded", (job, worker.log()[-3000:])
        assert job["estimated_finish"] is None
        assert all(e is not None for e in estimates)  # measurable once a stage has finished

        # --- artifacts: manifest and charts ----------------------------------------------------
        listing = {a["name"]: a for a in
                   api.client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]}
        assert {"manifest.json", "mrc.svg", "finetune.svg", "interpolation.svg",
                "interpolation_alpha.svg"} <= set(listing)
        manifest = api.client.get(listing["manifest.json"]["url"]).json()
        assert manifest["job_id"] == job_id
        assert manifest["checkpoint_sha256"] == checkpoint["sha256"]
        assert manifest["config"] == job["config"] and manifest["device"] == "cpu"
        assert manifest["config"]["checkpoint_entry"] == "model_ema"
        assert manifest["versions"]["torch"] == torch.__version__
        mrc_rows = api.client.get(f"/v1/jobs/{job_id}/mrc").json()["rows"]
        chart = ElementTree.fromstring(api.client.get(listing["mrc.svg"]["url"]).content)
        # Each module by its row's number and whole name: the MRC panel's labels' tooltips.
        top = next(g for g in chart.iter("{http://www.w3.org/2000/svg}g")
                   if g.get("class") == "categories")
        tips = [t.findtext("{http://www.w3.org/2000/svg}title") or ""
                for t in top.iter("{http://www.w3.org/2000/svg}text")]
        assert [tip.split(": MRC ", 1)[0] for tip in tips] == [
            f"{number} {r['module']}" for number, r in enumerate(mrc_rows, 1)]

        report = api.client.get(f"/v1/jobs/{job_id}/report")
        assert report.status_code == 200 and 'data-chart="tradeoff"' in report.text
        assert checkpoint["sha256"] in report.text  # the manifest is on the page

        # --- MLflow: the run and a model version tagged with the job and checkpoint ------------
        # The export runs once the job has succeeded (its failure would only be a warning).
        events = wait_until(api, f"/v1/jobs/{job_id}/events?limit=500", lambda page: any(
            e["kind"] == "mlflow_exported" or (e["kind"] == "warning"
                                               and e["payload"].get("stage") == "export")
            for e in page["items"]), timeout=60)
        kinds = [e["kind"] for e in events["items"]]
        assert "mlflow_exported" in kinds, (kinds, worker.log()[-3000:])
        client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
        version = client.get_model_version("rift-e2e-model", "1")
        assert version.tags["job_id"] == job_id
        assert version.tags["checkpoint_sha256"] == checkpoint["sha256"]
        run = client.get_run(version.run_id)
        assert run.data.params["selected_module"] == job["selected_module"]
        assert run.data.metrics["after.clean_accuracy"] == job["metrics"]["after"]["clean_accuracy"]
        weights = Path(client.download_artifacts(version.run_id, "weights/tuned.safetensors",
                                                 str(tmp_path)))
        assert hashlib.sha256(weights.read_bytes()).hexdigest() == listing["tuned.safetensors"][
            "sha256"]
        with safetensors.safe_open(str(weights), "pt") as tuned:  # says whose weights it holds
            assert tuned.metadata()["checkpoint_entry"] == "model_ema"

        # --- weights at α = 0 and 1, made afterwards ------------------------------------------
        base = f"/v1/jobs/{job_id}"
        bad = api.client.post(f"{base}/materialize", json={"alpha": 1.5})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "alpha"
        first = api.client.post(f"{base}/materialize", json={"alpha": 0.0, "evaluate": True},
                                headers={"X-Request-ID": "req-alpha-0"})
        second = api.client.post(f"{base}/materialize", json={"alpha": 1.0})
        assert first.status_code == 202 and second.status_code == 202, first.text
        again = api.client.post(f"{base}/materialize", json={"alpha": 1.0})
        assert again.status_code == 200 and again.json()["id"] == second.json()["id"]
        made = [wait_until(api, r.json()["url"], lambda m: m["status"] in ("succeeded", "failed"))
                for r in (first, second)]
        assert [m["status"] for m in made] == ["succeeded", "succeeded"], worker.log()[-3000:]
        assert [m["artifact"] for m in made] == ["tuned@0.safetensors", "tuned@1.safetensors"]
        theta_at = load_state_dict(digits_checkpoint_path)  # the EMA the job tuned
        theta_ft = safetensors.torch.load(
            api.client.get(listing["finetuned.safetensors"]["url"]).content)
        for made_one, expected in zip(made, (theta_at, theta_ft), strict=True):
            tensors = safetensors.torch.load(api.client.get(made_one["artifact_url"]).content)
            assert tensors.keys() == expected.keys()
            for key in expected:
                assert tensors[key].dtype == expected[key].dtype
                assert torch.equal(tensors[key], expected[key]), key
        # α = 0 is θ_AT: its accuracies are those the interpolation measured at α = 0.
        curve = api.client.get(f"{base}/curves").json()["interpolation"]
        start = next(p for p in curve if p["alpha"] == 0.0)
        one_example = 100.0 / 120
        assert abs(made[0]["clean_accuracy"] - start["clean_accuracy"]) < one_example / 2
        assert abs(made[0]["robust_accuracy"] - start["robust_accuracy"]) < one_example / 2
        assert made[1]["clean_accuracy"] is None  # not asked
        listed = api.client.get(f"{base}/materializations").json()["items"]
        assert [m["alpha"] for m in listed] == [1.0, 0.0]  # newest first, as every list

        # --- API metrics -------------------------------------------------------------------------
        found = samples(api.client.get("/metrics").text)
        assert value(found, "rift_http_requests_total", method="POST", route="/v1/jobs",
                     status="201") == 1
        assert value(found, "rift_http_requests_total", method="POST",
                     route="/v1/jobs/{job_id}/materialize", status="202") == 2
        assert (value(found, "rift_http_request_duration_seconds_count", method="GET",
                      route="/v1/jobs/{job_id}") or 0) >= 2
        uploaded = value(found, "rift_upload_bytes_total", kind="checkpoint") or 0
        assert uploaded >= (tmp_path / "ema.pt").stat().st_size
        assert value(found, "rift_uploads_total", kind="checkpoint", status="201") == 1

        # --- worker metrics ----------------------------------------------------------------------
        found = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        for stage in ("mrc", "finetune", "interpolate"):
            assert value(found, "rift_stage_duration_seconds_count", stage=stage,
                         outcome="done") == 1, stage
            assert value(found, "rift_stage_attempts_total", stage=stage) == 1
        assert value(found, "rift_jobs", status="succeeded") == 1
        assert value(found, "rift_jobs", status="running") == 0
        assert value(found, "rift_queue_depth", queue=service_env["CELERY_QUEUE"]) == 0
        assert value(found, "rift_materializations_total", outcome="succeeded") == 2
        assert (value(found, "rift_gpu_seconds_total", stage="mrc") or 0) == 0  # a CPU worker
    finally:
        logging.getLogger().removeHandler(handler)

    # --- logs: JSON lines, the request id from the API request to every stage in the worker ----
    worker_lines = [json.loads(line) for line in worker.log().splitlines()
                    if line.startswith("{")]
    tagged = [r for r in worker_lines if r.get("job_id") == job_id]
    assert {r["message"] for r in tagged} >= {f"job {job_id} stage {s} done"
                                              for s in ("mrc", "finetune", "interpolate")}
    assert all(r["request_id"] == REQUEST_ID for r in tagged if "stage" in r["message"])
    assert any(r["request_id"] == "req-alpha-0" and "materialized" in r["message"]
               for r in tagged)
    api_lines = [json.loads(line) for line in api_logs.getvalue().splitlines()]
    creation = [r for r in api_lines if r.get("route") == "/v1/jobs" and r.get("method") == "POST"]
    assert [r["request_id"] for r in creation] == [REQUEST_ID]
    assert creation[0]["status"] == 201 and creation[0]["duration_ms"] > 0
