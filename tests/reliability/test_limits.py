"""Cost control at the API: a spec at every bound is refused with its cost estimate, strict JSON
types, bounded lists and strings, short error quotes, per-project quotas (active jobs, stored
bytes), request rate (in-process and in Redis), open streams per key, and /readyz without
internal addresses."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from api.limits import RedisRateLimiter
from persistence.models import Project
from persistence.settings import Settings
from tests.api.helpers import Api, RecordingDispatcher, digits_config, free_port
from tests.reliability.conftest import create_job, upload
from tests.reliability.helpers import inside_one_rate_window

pytestmark = [pytest.mark.service]


def _set_limits(api: Api, **limits: int) -> None:
    with api.sessions() as session:
        session.execute(update(Project).where(Project.id == api.project_id).values(**limits))
        session.commit()


@pytest.fixture
def checkpoint(api: Api, small_cnn_file: Path) -> dict[str, object]:
    return upload(api.client, "/v1/checkpoints", "m.safetensors", small_cnn_file.read_bytes())


def test_a_maximal_spec_is_refused_with_its_estimate(api: Api, checkpoint: dict) -> None:
    # Every field at the largest value the service accepts.
    config = digits_config(
        attack={"steps": 200}, mrc={"steps": 200, "num_examples": 100_000, "batch_size": 8},
        finetune={"epochs": 200, "batch_size": 8}, interpolation={"alpha_step": 0.01},
        evaluation={"batch_size": 8})
    response = create_job(api.client, checkpoint["id"], config=config)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "cost_limit_exceeded" and error["field"] == "max_job_cost"
    estimate = error["estimate"]
    assert estimate["unit"] == "example-passes" and estimate["total"] > error["limit"]
    assert set(estimate["stages"]) == {"preflight", "adversarial_set", "mrc", "finetune",
                                      "interpolation"}
    assert str(estimate["total"]) in error["message"] and str(error["limit"]) in error["message"]
    assert api.count_jobs() == 0
    # The usual job is accepted and shows its estimate.
    job = create_job(api.client, checkpoint["id"]).json()
    assert 0 < job["cost_estimate"] < error["limit"]
    assert api.client.get(f"/v1/jobs/{job['id']}").json()["cost_estimate"] == job["cost_estimate"]


@pytest.mark.parametrize(("change", "field"), [
    ({"finetune": {"epochs": "10"}}, "config.finetune.epochs"),
    ({"attack": {"steps": 2.0}}, "config.attack.steps"),
    ({"attack": {"random_start": "yes"}}, "config.attack.random_start"),
    ({"finetune": {"epochs": 201}}, "config.finetune.epochs"),
    ({"attack": {"steps": 1000}}, "config.attack.steps"),
    ({"mrc": {"num_examples": 1_000_000}}, "config.mrc.num_examples"),
    ({"finetune": {"batch_size": 1}}, "config.finetune.batch_size"),
    ({"interpolation": {"alpha_step": 1e-4}}, "config.interpolation.alpha_step"),
    ({"mrc": {"include": ["conv*"] * 50_000}}, "config.mrc.include"),
    ({"mrc": {"include": ["x" * 201]}}, "config.mrc.include.0"),
])
def test_strict_types_and_bounds(api: Api, checkpoint: dict, change: dict, field: str) -> None:
    config = digits_config()
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and key in config \
            else value
    response = create_job(api.client, checkpoint["id"], config=config)
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]["fields"], response.json()["error"]
    assert len(response.content) < 20_000  # the 50,000 patterns are not echoed


def test_error_answers_quote_a_short_prefix(api: Api, checkpoint: dict) -> None:
    huge = "v" * 1_000_000
    for body in ({"checkpoint_id": checkpoint["id"], "config": digits_config(),
                  "labels": {"big": huge}},
                 {"checkpoint_id": huge[:200_000], "config": digits_config()}):
        response = api.client.post("/v1/jobs", json=body)
        assert response.status_code == 422
        assert len(response.content) < 5_000, len(response.content)
        assert "v" * 101 not in response.text
    response = api.client.get("/v1/jobs", params={"status": "q" * 10_000})
    assert response.status_code == 422 and len(response.content) < 5_000


def test_active_jobs_quota(api: Api, checkpoint: dict) -> None:
    _set_limits(api, max_active_jobs=2)
    assert create_job(api.client, checkpoint["id"]).status_code == 201
    second = create_job(api.client, checkpoint["id"]).json()
    third = create_job(api.client, checkpoint["id"])
    assert third.status_code == 429
    error = third.json()["error"]
    assert error["code"] == "quota_exceeded" and error["field"] == "max_active_jobs"
    assert error["limit"] == 2 and int(third.headers["Retry-After"]) > 0
    api.client.post(f"/v1/jobs/{second['id']}/cancel")
    assert create_job(api.client, checkpoint["id"]).status_code == 201


def test_stored_bytes_quota(api: Api, small_cnn_file: Path) -> None:
    size = small_cnn_file.stat().st_size
    _set_limits(api, max_stored_bytes=size * 2 + size // 2)
    first = upload(api.client, "/v1/checkpoints", "a.safetensors", small_cnn_file.read_bytes())
    upload(api.client, "/v1/checkpoints", "b.safetensors", small_cnn_file.read_bytes())
    refused = api.client.post("/v1/checkpoints",
                              files={"file": ("c.safetensors", small_cnn_file.read_bytes())})
    assert refused.status_code == 413, refused.text
    error = refused.json()["error"]
    assert error["code"] == "quota_exceeded" and error["field"] == "max_stored_bytes"
    assert len(api.stored_files()) == 2 and api.scratch_files() == []
    # Deleting frees the quota.
    assert api.client.delete(f"/v1/checkpoints/{first['id']}").status_code == 204
    upload(api.client, "/v1/checkpoints", "c.safetensors", small_cnn_file.read_bytes())


def test_materializations_count_against_stored_bytes(api: Api, checkpoint: dict) -> None:
    # Before: POST /v1/jobs/{id}/materialize never looked at max_stored_bytes, so a project at
    # its quota could still store one θ_FT-sized file per α (up to 10^6 of them).
    from concurrent.futures import ThreadPoolExecutor

    from persistence.models import Artifact, Job
    from persistence.records import recount_stored_bytes

    job = create_job(api.client, checkpoint["id"]).json()
    theta_ft = 1000
    with api.sessions() as session:
        row = session.get(Job, job["id"])
        assert row is not None
        row.status = "succeeded"
        session.add(Artifact(job_id=row.id, name="finetuned.safetensors", storage_key="k",
                             size=theta_ft, sha256="0" * 64,
                             content_type="application/octet-stream"))
        session.commit()
        # Written by hand, not by the worker's writers: the recount brings the quota's ledger
        # to these rows, as those writers would have.
        recount_stored_bytes(session, row.project_id or "", repair=True)
    # Room for exactly two more θ_FT-sized files.
    _set_limits(api, max_stored_bytes=int(checkpoint["size"]) + 3 * theta_ft)
    url = f"/v1/jobs/{job['id']}/materialize"
    with ThreadPoolExecutor(6) as pool:  # racing requests, each for a new α
        answers = list(pool.map(lambda a: api.client.post(url, json={"alpha": a}),
                                [0.1, 0.2, 0.3, 0.4, 0.6, 0.7]))
    assert sorted(a.status_code for a in answers) == [202, 202, 413, 413, 413, 413]
    refused = next(a for a in answers if a.status_code == 413).json()["error"]
    assert refused["code"] == "quota_exceeded" and refused["field"] == "max_stored_bytes"
    assert refused["incoming"] == theta_ft and "max_stored_bytes" in refused["message"]
    made = [a.json()["alpha"] for a in answers if a.status_code == 202]
    # Asking again for an α already requested is answered, not refused, at the quota.
    assert api.client.post(url, json={"alpha": made[0]}).status_code == 200
    assert len(api.client.get(f"/v1/jobs/{job['id']}/materializations").json()["items"]) == 2


def test_a_job_reserves_what_it_may_store_until_it_ends(api: Api, small_cnn_file: Path) -> None:
    # A job stores its θ_FT and tuned weights (a sweep: θ_FT per candidate), each the
    # checkpoint's size: a project must have room for them when the job is created, and they
    # count against the quota while the job is queued or running, before a worker writes them.
    size = small_cnn_file.stat().st_size
    checkpoint = upload(api.client, "/v1/checkpoints", "m.safetensors", small_cnn_file.read_bytes())
    _set_limits(api, max_stored_bytes=3 * size - 1)
    refused = create_job(api.client, checkpoint["id"])
    assert refused.status_code == 413, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["field"]) == ("quota_exceeded", "max_stored_bytes")
    assert (error["used"], error["incoming"], error["limit"]) == (size, 2 * size, 3 * size - 1)
    assert "tuned weights" in error["message"]

    _set_limits(api, max_stored_bytes=4 * size - 1)
    sweep = create_job(api.client, checkpoint["id"],
                       config=digits_config(finetune={"epochs": 1, "candidates": 2}))
    assert sweep.status_code == 413, sweep.text  # 2 candidates' θ_FT + tuned: 3 sizes more
    assert sweep.json()["error"]["incoming"] == 3 * size
    job = create_job(api.client, checkpoint["id"])
    assert job.status_code == 201, job.text  # queued (no worker here): 2 sizes reserved
    crowded = api.client.post("/v1/checkpoints",
                              files={"file": ("n.safetensors", small_cnn_file.read_bytes())})
    assert crowded.status_code == 413, crowded.text

    assert api.client.post(f"/v1/jobs/{job.json()['id']}/cancel").status_code in (200, 202)
    upload(api.client, "/v1/checkpoints", "n.safetensors", small_cnn_file.read_bytes())


def test_a_sweeps_reservation_counts_the_candidates_it_can_run(api: Api,
                                                                small_cnn_file: Path) -> None:
    """As the cost estimate counts them (persistence.cost.sweep_size): one module when
    finetune.module names it, at most the checkpoint's tensors. Before, every
    finetune.candidates counted: 17 sizes for a named module with candidates 16 (413)."""
    from rift import checkpoints

    size = small_cnn_file.stat().st_size
    tensors = len(checkpoints.load_state_dict(small_cnn_file))
    checkpoint = upload(api.client, "/v1/checkpoints", "m.safetensors", small_cnn_file.read_bytes())
    _set_limits(api, max_stored_bytes=4 * size)  # the checkpoint and 3 sizes more
    named = create_job(api.client, checkpoint["id"], config=digits_config(
        finetune={"epochs": 1, "candidates": 16, "module": "conv1", "lr_grid": [0.01, 0.05]}))
    assert named.status_code == 201, named.text  # 2 rates' θ_FT + tuned: 3 sizes
    assert api.client.get("/v1/usage").json()["stored_bytes"]["reserved_by_active_jobs"] == (
        3 * size)
    # Every module: no more than the checkpoint's tensors (an upper bound on its modules).
    every = create_job(api.client, checkpoint["id"],
                       config=digits_config(finetune={"epochs": 1, "candidates": 16}))
    assert every.status_code == 413, every.text
    assert every.json()["error"]["incoming"] == (min(16, tensors) + 1) * size


def test_request_rate_in_process(api: Api, clients: Callable[..., httpx.Client]) -> None:
    _set_limits(api, max_requests_per_minute=5)
    inside_one_rate_window()
    answers = [api.client.get("/v1/jobs") for _ in range(7)]
    assert [a.status_code for a in answers[:5]] == [200] * 5
    limited = answers[5]
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    error = limited.json()["error"]
    assert (error["field"], error["limit"], error["used"]) == ("max_requests_per_minute", 5, 6)
    assert clients("other-team").get("/v1/jobs").status_code == 200  # per project


def test_request_rate_in_redis(reliability_settings: Settings, start_api: Callable[..., Api],
                               redis_broker_url: str) -> None:
    # Two API processes' worth of apps share one count through Redis.
    first = start_api(reliability_settings, dispatcher=RecordingDispatcher(),
                      rate_limiter=RedisRateLimiter(redis_broker_url))
    second = start_api(reliability_settings, dispatcher=RecordingDispatcher(),
                       rate_limiter=RedisRateLimiter(redis_broker_url))
    _set_limits(first, max_requests_per_minute=4)
    client = second.client_for(first.key)
    inside_one_rate_window()
    codes = [first.client.get("/v1/jobs").status_code for _ in range(2)]
    codes += [client.get("/v1/jobs").status_code for _ in range(3)]
    client.close()
    assert codes[:4] == [200] * 4 and codes[4] == 429


def test_open_streams_per_key(api: Api, checkpoint: dict) -> None:
    _set_limits(api, max_streams_per_key=1)
    job = create_job(api.client, checkpoint["id"]).json()
    url = f"{api.url}/v1/jobs/{job['id']}/events"
    headers = {"Authorization": f"Bearer {api.key}", "Accept": "text/event-stream"}
    opened = threading.Event()
    done = threading.Event()

    def hold() -> None:
        with httpx.stream("GET", url, headers=headers, timeout=30) as response:
            assert response.status_code == 200
            for _ in response.iter_lines():
                opened.set()
                if done.wait(0.05):
                    return

    holder = threading.Thread(target=hold)
    holder.start()
    assert opened.wait(10)
    second = api.client.get(f"/v1/jobs/{job['id']}/events", headers={"Accept": "text/event-stream"})
    assert second.status_code == 429
    error = second.json()["error"]
    assert (error["field"], error["limit"], error["used"]) == ("max_streams_per_key", 1, 1)
    assert api.client.get(f"/v1/jobs/{job['id']}/events").status_code == 200  # pages still work
    done.set()
    api.client.post(f"/v1/jobs/{job['id']}/cancel")  # the stream ends with the job
    holder.join(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the slot is given back when the stream closes
        with httpx.stream("GET", url, headers=headers, timeout=10) as response:
            if response.status_code == 200:
                break
        time.sleep(0.2)
    else:
        pytest.fail("the stream slot was not released")


def test_readyz_names_components_not_addresses(reliability_settings: Settings,
                                               start_api: Callable[..., Api]) -> None:
    port = free_port()
    from api.dispatch import CeleryDispatcher

    dead = reliability_settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{port}/0"})
    api = start_api(dead, dispatcher=CeleryDispatcher(dead))
    response = api.client.get("/readyz")
    assert response.status_code == 503
    body = json.dumps(response.json())
    assert response.json()["error"]["field"] == "broker"
    assert str(port) not in body and "127.0.0.1" not in body and "Error" not in body
