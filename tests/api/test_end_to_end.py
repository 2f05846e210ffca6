"""The whole service through HTTP, with a real Celery worker process, in three setups:

- production: Postgres, Redis and a local object store;
- the embedded default: SQLite, a local folder and kombu's SQLAlchemy broker (no server at all);
- S3: Postgres and Redis with the object store on a real S3-speaking server (moto) on loopback,
  downloads redirected to presigned URLs.

Each uploads the adversarially trained digits checkpoint, creates a job, follows its event stream
until it succeeds, downloads the weights, and checks that the tuned weights are exactly the
interpolation (1 − α)·θ_AT + α·θ_FT at the reported α of the uploaded checkpoint and the downloaded
fine-tuned end point, and that they give the reported accuracies when evaluated again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from api.dispatch import CeleryDispatcher
from persistence.settings import Settings
from tests.api.helpers import (
    Api,
    embedded_environment,
    readyz_once_started,
    spawn_worker,
    upload_checkpoint,
)
from tests.api.test_job_events import parse_sse
from tests.preloaded_launcher import Launcher
from tests.service_fixtures import WorkerProcess, settings_from_env

pytestmark = [pytest.mark.service, pytest.mark.slow]

JOB_TIMEOUT_S = 300.0
ARTIFACTS = {"tuned.safetensors", "finetuned.safetensors", "mrc.csv", "result.json",
             "manifest.json", "mrc.svg", "finetune.svg", "interpolation.svg",
             "interpolation_alpha.svg"}


def follow_events(api: Api, job_id: str) -> list[dict[str, Any]]:
    """The job's events from its live SSE stream, until the stream ends with the job."""
    events: list[dict[str, Any]] = []
    with api.client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=JOB_TIMEOUT_S,
                           headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        buffer = ""
        for chunk in response.iter_text():
            buffer += chunk
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                events += parse_sse(block + "\n\n")
    return events


def download(api: Api, url: str, *, expect_redirect: bool) -> bytes:
    response = api.client.get(url)
    if expect_redirect:
        assert response.status_code == 307, response.text
        target = response.headers["location"]
        assert target.startswith("http") and "Signature" in target
        response = api.client.get(target)
    assert response.status_code == 200, response.text
    return response.content


def check_job_through_http(api: Api, checkpoint_path: Path, config: dict[str, Any],
                           worker: WorkerProcess, *, expect_redirect: bool = False) -> str:
    """Upload, create, follow, download and verify one job (see the module docstring); returns
    the job's id."""
    import safetensors.torch
    import torch

    from rift.attacks import PGD
    from rift.checkpoints import load_into, load_state_dict
    from rift.config import RiftConfig
    from rift.data import load_dataset
    from rift.evaluation import evaluate_accuracy
    from rift.models import build_model

    checkpoint = upload_checkpoint(api, checkpoint_path)
    assert checkpoint["sha256"] == hashlib.sha256(checkpoint_path.read_bytes()).hexdigest()
    body = {"checkpoint_id": checkpoint["id"], "config": config, "labels": {"flow": "e2e"}}
    created = api.client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "e2e"})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    retried = api.client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "e2e"})
    assert retried.status_code == 200 and retried.json()["id"] == job_id

    events = follow_events(api, job_id)
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "end", kinds
    assert events[-1]["data"]["status"] == "succeeded", (kinds, worker.log()[-3000:])
    for stage in ("mrc", "finetune", "interpolate"):
        assert any(e["event"] == "stage_finished" and e["data"]["payload"]["stage"] == stage
                   for e in events), kinds
    assert "job_succeeded" in kinds

    job = api.client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["error"] is None
    assert job["device"] == "cpu" and job["queue_position"] is None
    assert all(s["status"] == "done" and s["started_at"] and s["finished_at"]
               for s in job["stages"])
    alpha = job["chosen_alpha"]
    assert alpha is not None and 0.0 <= alpha <= 1.0

    mrc = api.client.get(f"/v1/jobs/{job_id}/mrc").json()
    assert [r["module"] for r in mrc["rows"] if r["selected"]] == [job["selected_module"]]
    curves = api.client.get(f"/v1/jobs/{job_id}/curves").json()
    assert len(curves["epochs"]) == config["finetune"]["epochs"]
    assert [p["alpha"] for p in curves["interpolation"] if p["chosen"]] == [alpha]

    listing = {a["name"]: a for a in api.client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]}
    assert set(listing) == ARTIFACTS
    files = {}
    for name in ("tuned.safetensors", "finetuned.safetensors", "result.json"):
        content = download(api, listing[name]["url"], expect_redirect=expect_redirect)
        assert hashlib.sha256(content).hexdigest() == listing[name]["sha256"], name
        assert len(content) == listing[name]["size"]
        files[name] = content
    assert json.loads(files["result.json"])["chosen_alpha"] == alpha

    # The tuned weights are θ_α of the uploaded θ_AT and the downloaded θ_FT (docs/algorithm.md, step 3).
    tuned = safetensors.torch.load(files["tuned.safetensors"])
    finetuned = safetensors.torch.load(files["finetuned.safetensors"])
    original = load_state_dict(checkpoint_path)
    assert set(tuned) == set(original) == set(finetuned)
    for key, start in original.items():
        if start.is_floating_point():
            expected = (1 - alpha) * start.double() + alpha * finetuned[key].double()
            torch.testing.assert_close(tuned[key].double(), expected, rtol=0, atol=1e-6)
        else:
            assert torch.equal(tuned[key], finetuned[key] if alpha == 1.0 else start), key
    assert any(not torch.equal(original[k], finetuned[k]) for k in original)

    # ... and give the accuracies the job reports, evaluated again here.
    spec = RiftConfig.model_validate(job["config"])
    splits = load_dataset(spec.dataset, spec.seed)
    test = splits.test
    if spec.evaluation.max_examples is not None and spec.evaluation.max_examples < len(test):
        test = test.head(spec.evaluation.max_examples)
    model = build_model(spec.architecture, in_channels=splits.image_shape[0],
                        image_size=splits.image_shape[1])
    load_into(model, tuned)
    torch.set_num_threads(1)  # as the worker (OMP_NUM_THREADS=1): same reduction order
    report = evaluate_accuracy(model.eval(), test, attack=PGD.from_spec(spec.attack),
                               batch_size=spec.evaluation.batch_size,
                               device=torch.device("cpu"), seed=spec.seed)
    after = job["metrics"]["after"]
    one_example = 100.0 / len(test)
    assert abs(report.clean_accuracy - after["clean_accuracy"]) < one_example / 2
    assert abs(report.robust_accuracy - after["robust_accuracy"]) < one_example / 2
    assert job["metrics"]["before"]["clean_accuracy"] is not None
    return str(job_id)


@pytest.fixture
def workers(tmp_path: Path, optional_worker_launcher: Launcher | None
            ) -> Iterator[Callable[[dict[str, str]], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(env: dict[str, str]) -> WorkerProcess:
        worker = spawn_worker(env, tmp_path / f"worker-{len(started)}.log",
                              optional_worker_launcher)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


def test_production_postgres_redis(service_env: dict[str, str], service_settings: Settings,
                                   start_api: Callable[..., Api],
                                   workers: Callable[[dict[str, str]], WorkerProcess],
                                   digits_checkpoint_path: Path,
                                   digits_job_config: dict[str, Any]) -> None:
    worker = workers(service_env)
    api = start_api(service_settings, dispatcher=CeleryDispatcher(service_settings))
    assert readyz_once_started(api).status_code == 200
    check_job_through_http(api, digits_checkpoint_path, digits_job_config, worker)


def test_embedded_default(sqlite_url: str, tmp_path: Path, start_api: Callable[..., Api],
                          workers: Callable[[dict[str, str]], WorkerProcess],
                          digits_checkpoint_path: Path,
                          digits_job_config: dict[str, Any]) -> None:
    env = embedded_environment(sqlite_url, tmp_path)
    settings = settings_from_env(env)
    api = start_api(settings, dispatcher=CeleryDispatcher(settings))
    assert readyz_once_started(api).status_code == 200

    # Cancelled while queued (no worker yet): it must never start, even once its message is
    # taken; the worker takes it before the next job's, so it has been handled by the end.
    checkpoint = upload_checkpoint(api, digits_checkpoint_path)
    body = {"checkpoint_id": checkpoint["id"], "config": digits_job_config}
    queued = api.client.post("/v1/jobs", json=body).json()
    assert api.client.post(f"/v1/jobs/{queued['id']}/cancel").json()["status"] == "cancelled"

    worker = workers(env)
    check_job_through_http(api, digits_checkpoint_path, digits_job_config, worker)
    never_started = api.client.get(f"/v1/jobs/{queued['id']}").json()
    assert never_started["status"] == "cancelled" and never_started["started_at"] is None
    assert all(s["status"] == "cancelled" and s["started_at"] is None
               for s in never_started["stages"])
    kinds = [e["kind"] for e in
             api.client.get(f"/v1/jobs/{queued['id']}/events").json()["items"]]
    assert kinds == ["job_created", "job_cancelled"]

    # Cancelled while running: it stops at the next batch boundary and ends cancelled.
    long_config = {**digits_job_config,
                   "finetune": {**digits_job_config["finetune"], "epochs": 200}}
    running = api.client.post("/v1/jobs", json={**body, "config": long_config}).json()
    job = wait_for_job(api, running["id"], lambda j: j["stage"] == "finetune"
                       and j["status"] == "running")
    answer = api.client.post(f"/v1/jobs/{running['id']}/cancel")
    assert answer.status_code == 200
    assert answer.json()["cancel_requested"] is True
    job = wait_for_job(api, running["id"], lambda j: j["status"] != "running")
    assert job["status"] == "cancelled", worker.log()[-3000:]
    stages = {s["stage"]: s["status"] for s in job["stages"]}
    assert stages == {"mrc": "done", "finetune": "cancelled", "interpolate": "cancelled"}
    assert len(api.client.get(f"/v1/jobs/{running['id']}/curves").json()["epochs"]) == 0
    assert api.client.post(f"/v1/jobs/{running['id']}/cancel").status_code == 409


def wait_for_job(api: Api, job_id: str, condition: Callable[[dict[str, Any]], bool],
                 timeout_s: float = 120.0) -> dict[str, Any]:
    """Poll GET /v1/jobs/{id} until ``condition`` holds; returns the job."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = dict(api.client.get(f"/v1/jobs/{job_id}").json())
        if condition(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} stuck: {job['status']} {job['stage']}"
        time.sleep(0.05)


@pytest.fixture
def s3_server(moto_s3_endpoint: str) -> str:
    """The session's moto S3 server (a real HTTP server the worker process talks to as well)."""
    return moto_s3_endpoint


def test_s3_store_with_presigned_downloads(service_env: dict[str, str], s3_server: str,
                                           start_api: Callable[..., Api],
                                           workers: Callable[[dict[str, str]], WorkerProcess],
                                           digits_checkpoint_path: Path,
                                           digits_job_config: dict[str, Any]) -> None:
    env = {
        **service_env,
        "STORE_KIND": "s3",
        "S3_BUCKET": f"rift-{uuid.uuid4().hex[:10]}",
        "S3_ENDPOINT_URL": s3_server,
        "S3_ACCESS_KEY": "testing",
        "S3_SECRET_KEY": "testing",
        "S3_CREATE_BUCKET": "true",
        "S3_REDIRECT_DOWNLOADS": "true",
    }
    settings = settings_from_env(env)
    api = start_api(settings, dispatcher=CeleryDispatcher(settings))  # creates the bucket
    worker = workers(env)
    assert readyz_once_started(api).status_code == 200
    job_id = check_job_through_http(api, digits_checkpoint_path, digits_job_config, worker,
                                    expect_redirect=True)
    assert not os.path.exists(env["STORE_ROOT"])  # nothing went to a local folder
    # Without the redirect the API streams from S3 itself, ranges included.
    url = f"/v1/jobs/{job_id}/artifacts/tuned.safetensors"
    whole = api.client.get(url, params={"redirect": "false"})
    assert whole.status_code == 200
    part = api.client.get(url, params={"redirect": "false"}, headers={"Range": "bytes=100-299"})
    assert part.status_code == 206 and part.content == whole.content[100:300]
    assert part.headers["content-range"] == f"bytes 100-299/{len(whole.content)}"
