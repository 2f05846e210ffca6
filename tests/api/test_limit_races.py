"""Per-project limits under pressure, on SQLite and Postgres: requests sent at once when one slot
is left admit exactly one, a refusal names the limit, its value and the current use and leaves
nothing behind, every key of a project shares its quota, and a limit lowered while jobs are
queued keeps them and refuses new ones until enough have ended."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from persistence.api_keys import create_key, revoke_key
from persistence.models import Artifact, Job, Materialization, Project
from persistence.settings import Settings
from tests.api.helpers import (
    Api,
    RecordingDispatcher,
    digits_config,
    error_of,
    upload_checkpoint,
)

pytestmark = [pytest.mark.service]


def _set_limits(api: Api, **limits: int | None) -> None:
    with api.sessions() as session:
        session.execute(update(Project).where(Project.id == api.project_id).values(**limits))
        session.commit()


def _at_once(api: Api, count: int, send: Callable[[httpx.Client, int], httpx.Response]
             ) -> list[httpx.Response]:
    """``send(client, i)`` for i in 0..count-1, each on its own connection, released together."""
    start = threading.Barrier(count)

    def one(index: int) -> httpx.Response:
        with api.client_for(api.key) as client:
            start.wait()
            return send(client, index)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def _job(client: httpx.Client, checkpoint_id: str, index: int = 0) -> httpx.Response:
    return client.post("/v1/jobs", json={"checkpoint_id": checkpoint_id, "config": digits_config(),
                                         "labels": {"i": str(index)}})


def _refused_for(answer: httpx.Response, quota: str, limit: int, used: int) -> None:
    assert answer.status_code == 429, answer.text
    error = error_of(answer)
    assert (error["code"], error["field"], error["limit"], error["used"]) == (
        "quota_exceeded", quota, limit, used), error
    assert str(limit) in error["message"] and str(used) in error["message"]
    assert int(answer.headers["Retry-After"]) > 0


@pytest.fixture
def checkpoint_id(api: Api, small_cnn_file: Path) -> str:
    return str(upload_checkpoint(api, small_cnn_file)["id"])


def test_one_job_slot_left_admits_one_of_the_jobs_sent_at_once(api: Api,
                                                                checkpoint_id: str) -> None:
    _set_limits(api, max_active_jobs=2)
    assert _job(api.client, checkpoint_id).status_code == 201
    answers = _at_once(api, 6, lambda client, i: _job(client, checkpoint_id, i))
    assert sorted(a.status_code for a in answers) == [201] + [429] * 5
    for refused in (a for a in answers if a.status_code == 429):
        _refused_for(refused, "max_active_jobs", 2, 2)
    assert api.count_jobs() == 2 and len(api.dispatcher.enqueued) == 2  # nothing half-made


def test_every_key_of_a_project_shares_its_quota_and_a_revoked_keys_jobs_count(
        api: Api, checkpoint_id: str) -> None:
    _set_limits(api, max_active_jobs=2)
    with api.sessions() as session:
        project = session.get(Project, api.project_id)
        assert project is not None
        second = create_key(session, project, ["read", "write"])
    first = _job(api.client, checkpoint_id).json()
    with api.client_for(second.key) as other:
        assert _job(other, checkpoint_id).status_code == 201
        _refused_for(_job(api.client, checkpoint_id), "max_active_jobs", 2, 2)
        _refused_for(_job(other, checkpoint_id), "max_active_jobs", 2, 2)
        # A revoked key's queued job stays queued (jobs belong to the project) and counts.
        with api.sessions() as session:
            revoke_key(session, second.row.id)
        assert _job(other, checkpoint_id).status_code == 401
    _refused_for(_job(api.client, checkpoint_id), "max_active_jobs", 2, 2)
    assert api.client.post(f"/v1/jobs/{first['id']}/cancel").status_code in (200, 202)
    assert _job(api.client, checkpoint_id).status_code == 201


def test_a_limit_lowered_under_queued_jobs_keeps_them_and_refuses_new_ones(
        api: Api, checkpoint_id: str) -> None:
    jobs = [_job(api.client, checkpoint_id, i).json() for i in range(3)]
    _set_limits(api, max_active_jobs=1)
    _refused_for(_job(api.client, checkpoint_id), "max_active_jobs", 1, 3)
    assert [api.client.get(f"/v1/jobs/{j['id']}").json()["status"] for j in jobs] == \
        ["queued"] * 3
    usage = api.client.get("/v1/usage").json()["active_jobs"]
    assert (usage["used"], usage["limit"]) == (3, 1)
    # A job that ends any way frees its slot: cancelled, failed, or lost (failed by recovery).
    api.client.post(f"/v1/jobs/{jobs[0]['id']}/cancel")
    with api.sessions() as session:
        session.execute(update(Job).where(Job.id == jobs[1]["id"]).values(status="failed"))
        session.commit()
    _refused_for(_job(api.client, checkpoint_id), "max_active_jobs", 1, 1)
    with api.sessions() as session:
        session.execute(update(Job).where(Job.id == jobs[2]["id"]).values(status="succeeded"))
        session.commit()
    assert _job(api.client, checkpoint_id).status_code == 201
    _set_limits(api, max_active_jobs=None)  # back to the setting's 20
    assert _job(api.client, checkpoint_id).status_code == 201


def _succeeded_job(api: Api, checkpoint_id: str) -> dict[str, Any]:
    """A job marked succeeded with its θ_FT row (what materializing needs; no worker runs)."""
    job = _job(api.client, checkpoint_id).json()
    with api.sessions() as session:
        row = session.get(Job, job["id"])
        assert row is not None
        row.status = "succeeded"
        session.add(Artifact(job_id=row.id, name="finetuned.safetensors", storage_key="k",
                             size=1000, sha256="0" * 64,
                             content_type="application/octet-stream"))
        session.commit()
    return dict(job)


def test_one_materialization_slot_left_admits_one_of_the_alphas_sent_at_once(
        api_settings: Settings, start_api: Callable[..., Api], small_cnn_file: Path) -> None:
    api = start_api(api_settings.model_copy(update={"materialize_max_pending": 2}),
                    dispatcher=RecordingDispatcher())
    checkpoint = upload_checkpoint(api, small_cnn_file)["id"]
    job = _succeeded_job(api, checkpoint)
    url = f"/v1/jobs/{job['id']}/materialize"
    assert api.client.post(url, json={"alpha": 0.1}).status_code == 202
    answers = _at_once(api, 6, lambda client, i: client.post(url, json={"alpha": 0.2 + i / 10}))
    assert sorted(a.status_code for a in answers) == [202] + [429] * 5
    for refused in (a for a in answers if a.status_code == 429):
        _refused_for(refused, "max_pending_materializations", 2, 2)
    # A materialization is no job: it takes no job slot, and the refused left no row or message.
    assert api.count(Materialization) == 2
    assert len(api.dispatcher.enqueued) == 1 + 2
    usage = api.client.get("/v1/usage").json()
    assert usage["active_jobs"]["used"] == 0
    # The count and limit the 429 named are in the usage too (before, GET /v1/usage showed
    # every limit but this one, so a client could not see how near it was).
    assert usage["pending_materializations"] == {"used": 2, "limit": 2}


def test_streams_opened_at_once_never_pass_the_keys_limit(api: Api, checkpoint_id: str) -> None:
    _set_limits(api, max_streams_per_key=2)
    job = _job(api.client, checkpoint_id).json()
    url = f"{api.url}/v1/jobs/{job['id']}/events"
    headers = {"Authorization": f"Bearer {api.key}", "Accept": "text/event-stream"}
    count = 5
    start, answered = threading.Barrier(count), threading.Barrier(count)

    def one(_: int) -> tuple[int, dict[str, Any]]:
        start.wait()
        with httpx.stream("GET", url, headers=headers, timeout=30) as response:
            error: dict[str, Any] = {}
            if response.status_code != 200:
                response.read()
                error = error_of(response)
            answered.wait(20)  # every stream is answered while the others are still open
            return response.status_code, error

    with ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(one, range(count)))
    assert sorted(code for code, _ in answers) == [200, 200, 429, 429, 429]
    for code, error in answers:
        if code == 429:
            assert (error["field"], error["limit"], error["used"]) == (
                "max_streams_per_key", 2, 2), error
