"""Requests of one project sent at the same moment (threads behind a barrier, each with its own
connection, to the API over HTTP on Postgres): the limits hold, a request repeated under its
Idempotency-Key is answered with the one resource, deletions of one thing answer once 204 and
then 404 (as they would one after the other), and an admin write that races a deletion of its
project is a 404 or 409, never a 500."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, update

import api.routes.admin as admin_routes
import persistence.api_keys as api_keys
import persistence.deletion as deletion
import persistence.materializations as materializations
import persistence.webhooks as webhooks
from persistence.jobs import create_job as insert_job
from persistence.models import Artifact, Checkpoint, Job, Project
from persistence.records import recount_stored_bytes
from persistence.settings import Settings
from tests.api.helpers import Api, RecordingDispatcher, digits_config, error_of, make_key
from tests.reliability.conftest import create_job, tiny_npz, upload

pytestmark = [pytest.mark.service]


def _set_limits(api: Api, **limits: int) -> None:
    with api.sessions() as session:
        session.execute(update(Project).where(Project.id == api.project_id).values(**limits))
        session.commit()


def at_once(api: Api, count: int, send: Callable[[httpx.Client, int], httpx.Response],
            key: str | None = None) -> list[httpx.Response]:
    """``send(client, i)`` for i in 0..count-1, each in its own thread and connection, released
    together by a barrier once every connection is made."""
    start = threading.Barrier(count)

    def one(index: int) -> httpx.Response:
        with api.client_for(key or api.key) as client:
            start.wait()
            return send(client, index)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def statuses(answers: list[httpx.Response]) -> list[int]:
    return sorted(answer.status_code for answer in answers)


@pytest.fixture
def checkpoint(api: Api, small_cnn_file: Path) -> dict[str, Any]:
    return upload(api.client, "/v1/checkpoints", "m.safetensors", small_cnn_file.read_bytes())


@pytest.mark.parametrize("limit", ["max_active_jobs", "max_stored_bytes"])
def test_jobs_sent_at_once_never_pass_a_limit(api: Api, checkpoint: dict, limit: str) -> None:
    size = int(checkpoint["size"])
    # Room for 3 jobs: 3 active, or 3 jobs' reservations (2 checkpoint sizes each).
    _set_limits(api, **{limit: 3 if limit == "max_active_jobs" else size + 6 * size + size // 2})
    answers = at_once(api, 7, lambda client, i: create_job(client, checkpoint["id"],
                                                           labels={"i": str(i)}))
    refusal = 429 if limit == "max_active_jobs" else 413
    assert statuses(answers) == [201] * 3 + [refusal] * 4, [a.text[:200] for a in answers]
    for refused in (a for a in answers if a.status_code == refusal):
        assert (error_of(refused)["code"], error_of(refused)["field"]) == ("quota_exceeded", limit)
    assert api.count_jobs() == 3


@pytest.mark.parametrize("limit", ["max_active_jobs", "max_stored_bytes", "multipart"])
def test_one_job_request_sent_at_once_under_its_key_at_a_quota_makes_one_job(
        api: Api, small_cnn_file: Path, limit: str) -> None:
    # Before: the first request's job filled the quota, and the copies that had not seen it
    # yet when they looked the key up counted it as another job: 429 (or 413) for a replay,
    # every time. Now the key is looked up again under the project's lock, and after a refusal.
    content = small_cnn_file.read_bytes()
    size = len(content)
    if limit == "multipart":  # the checkpoint comes with the job: the losers' copies go
        _set_limits(api, max_active_jobs=1)

        def send(client: httpx.Client, _: int) -> httpx.Response:
            return client.post("/v1/jobs", files={"checkpoint": ("m.safetensors", content)},
                               data={"spec": json.dumps({"config": digits_config()})},
                               headers={"Idempotency-Key": "retry"})
    else:
        checkpoint_id = upload(api.client, "/v1/checkpoints", "m.safetensors", content)["id"]
        # Room for one job: one active, or one job's reservation (2 checkpoint sizes).
        _set_limits(api, **{limit: 1 if limit == "max_active_jobs" else 3 * size + size // 2})

        def send(client: httpx.Client, _: int) -> httpx.Response:
            return client.post("/v1/jobs", json={"checkpoint_id": checkpoint_id,
                                                 "config": digits_config()},
                               headers={"Idempotency-Key": "retry"})

    answers = at_once(api, 4, send)
    assert statuses(answers) == [200, 200, 200, 201], [a.text[:200] for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert (api.count_jobs(), api.count(Checkpoint), len(api.stored_files())) == (1, 1, 1)


def _succeeded_job(api: Api, checkpoint: dict, theta_ft: int) -> dict[str, Any]:
    """A job marked succeeded, with a θ_FT row of ``theta_ft`` bytes (what materializing needs
    recorded; no worker runs here)."""
    job = create_job(api.client, checkpoint["id"]).json()
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
        recount_stored_bytes(session, api.project_id, repair=True)
    return dict(job)


@pytest.mark.parametrize("limit", ["materialize_max_pending", "max_stored_bytes"])
def test_one_alpha_asked_at_once_at_a_quota_is_queued_once(
        api: Api, checkpoint: dict, limit: str, reliability_settings: Settings,
        start_api: Callable[..., Api]) -> None:
    # Before: like the jobs above, the copies counted the first request's queued row (or its
    # reservation) as one more: 429 or 413 for an α already asked for.
    if limit == "materialize_max_pending":
        api = start_api(reliability_settings.model_copy(update={limit: 1}),
                        dispatcher=RecordingDispatcher())
    theta_ft = 1000
    job = _succeeded_job(api, checkpoint, theta_ft)
    if limit == "max_stored_bytes":  # room for one θ_α
        _set_limits(api, max_stored_bytes=int(checkpoint["size"]) + 2 * theta_ft + 500)
    url = f"/v1/jobs/{job['id']}/materialize"
    answers = at_once(api, 4, lambda client, _: client.post(url, json={"alpha": 0.3}))
    assert statuses(answers) == [200, 200, 200, 202], [a.text[:200] for a in answers]
    made = {a.json()["id"] for a in answers}
    assert len(made) == 1
    assert api.dispatcher.enqueued == [job["id"], *made]  # queued once


def test_deletes_sent_at_once_answer_204_once_then_404(api: Api, checkpoint: dict,
                                                       small_cnn_file: Path) -> None:
    # Before: the losers of a job's deletion answered 409 "job_active ... running again",
    # of a project's 401 "the API key's project was deleted" (to an admin of another
    # project), of a checkpoint's, a dataset's or a webhook's 204 (deleting nothing).
    job = create_job(api.client, checkpoint["id"]).json()
    dataset = upload(api.client, "/v1/datasets", "d.npz", tiny_npz())
    assert api.client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    hook = api.client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"}).json()
    _, admin = make_key(api.sessions, "ops", ("admin",))
    _, doomed = make_key(api.sessions, "doomed")
    with api.client_for(doomed) as client:
        upload(client, "/v1/checkpoints", "m.safetensors", small_cnn_file.read_bytes())
    for path, key, code in (
            (f"/v1/jobs/{job['id']}", None, "job_not_found"),
            (f"/v1/checkpoints/{checkpoint['id']}", None, "checkpoint_not_found"),
            (f"/v1/datasets/{dataset['id']}", None, "dataset_not_found"),
            (f"/v1/webhooks/{hook['id']}", None, "webhook_not_found"),
            ("/v1/admin/projects/doomed", admin, "project_not_found")):
        answers = at_once(api, 3, lambda client, _, path=path: client.delete(path), key=key)
        assert statuses(answers) == [204, 404, 404], (path, [a.text[:200] for a in answers])
        assert {error_of(a)["code"] for a in answers if a.status_code == 404} == {code}
    assert api.stored_files() == [] and api.count_jobs() == 0


def test_admin_writes_racing_their_projects_creation_or_deletion(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    # The interleavings are placed by wrapping a step of the server (it runs in this process).
    _, key = make_key(api.sessions, "ops", ("admin",))
    admin = api.client_for(key)
    assert admin.post("/v1/admin/projects", json={"name": "twice"}).status_code == 201
    looked: list[str] = []
    real_lookup = api_keys.project_by_name

    def created_just_after_the_check(session: Any, name: str) -> Any:
        looked.append(name)
        return None if len(looked) == 1 else real_lookup(session, name)

    monkeypatch.setattr(api_keys, "project_by_name", created_just_after_the_check)
    # Before: 500 (the name's unique index refused the insert).
    second = admin.post("/v1/admin/projects", json={"name": "twice"})
    assert second.status_code == 409, second.text
    assert error_of(second)["code"] == "project_exists"
    # `rift-admin keys create` for a new project, run twice at once: both get the project.
    looked.clear()
    with api.sessions() as session:
        twice = api_keys.create_project(session, "twice", exist_ok=True)
    assert twice.name == "twice" and len(looked) == 2
    monkeypatch.setattr(api_keys, "project_by_name", real_lookup)

    def deleted_first(step: Callable[..., Any]) -> Callable[..., Any]:
        def run(session: Any, *args: Any, **kwargs: Any) -> Any:
            with api.sessions() as other:  # the concurrent DELETE /v1/admin/projects/gone
                other.execute(delete(Project).where(Project.name == "gone"))
                other.commit()
            return step(session, *args, **kwargs)
        return run

    # Before: 500 for both (the key's foreign key; the UPDATE that matched no row).
    for method, path, body, step in (
            ("POST", "/v1/admin/projects/gone/keys", None, "create_key"),
            ("PATCH", "/v1/admin/projects/gone", {"max_active_jobs": 3}, "set_project_limits")):
        assert admin.post("/v1/admin/projects", json={"name": "gone"}).status_code == 201
        with monkeypatch.context() as patch:
            patch.setattr(admin_routes, step, deleted_first(getattr(admin_routes, step)))
            answer = admin.request(method, path, json=body)
        assert answer.status_code == 404, answer.text
        assert error_of(answer)["code"] == "project_not_found"
    admin.close()


def test_a_webhook_deleted_while_its_jobs_end_is_recorded_is_not_a_500(
        api: Api, checkpoint: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    # A job's end and its webhook messages are one transaction (an outbox). Before: a DELETE of
    # an endpoint committed between the endpoints' read and the messages' insert broke the
    # insert's foreign key: the cancel answered 500 (a worker's finished stage was not
    # recorded). Now the endpoints read are held until the end is committed.
    hook = api.client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"}).json()
    job = create_job(api.client, checkpoint["id"]).json()
    read_endpoints = webhooks.subscribed_endpoints
    deletion: dict[str, Any] = {}

    def deleted_after_the_read(session: Any, project_id: str) -> Any:
        endpoints = read_endpoints(session, project_id)

        def delete_it() -> None:
            with api.client_for(api.key) as client:
                deletion["answer"] = client.delete(f"/v1/webhooks/{hook['id']}")

        deletion["thread"] = threading.Thread(target=delete_it)
        deletion["thread"].start()
        deletion["thread"].join(timeout=1.0)  # it waits for this transaction now
        return endpoints

    monkeypatch.setattr(webhooks, "subscribed_endpoints", deleted_after_the_read)
    cancelled = api.client.post(f"/v1/jobs/{job['id']}/cancel")
    deletion["thread"].join()
    assert cancelled.status_code == 200, cancelled.text
    assert deletion["answer"].status_code == 204
    assert api.client.get(f"/v1/webhooks/{hook['id']}").status_code == 404


def test_an_alpha_asked_while_its_job_is_deleted_is_a_404(
        api: Api, checkpoint: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: a DELETE of the job committed between the request's read of the job and its
    # insert of the materialization broke the row's foreign key: 500.
    job = _succeeded_job(api, checkpoint, 1000)
    lock_project = materializations.lock_project

    def deleted_meanwhile(session: Any, project_id: str) -> None:
        with api.sessions() as other:  # the concurrent DELETE /v1/jobs/{id}
            other.execute(delete(Job).where(Job.id == job["id"]))
            other.commit()
        lock_project(session, project_id)

    monkeypatch.setattr(materializations, "lock_project", deleted_meanwhile)
    answer = api.client.post(f"/v1/jobs/{job['id']}/materialize", json={"alpha": 0.3})
    assert answer.status_code == 404, answer.text
    assert (error_of(answer)["code"], error_of(answer)["field"]) == ("job_not_found", "job_id")


def test_a_forced_project_deletion_cancels_a_job_its_keys_created_meanwhile(
        api: Api, small_cnn_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A job request of one of its keys that authenticated before the keys were revoked inserts
    # its job after the deletion's round of cancellations. Before: 409 project_has_active_jobs
    # ("cancel them first, or delete with force"), to a deletion with force.
    _, admin = make_key(api.sessions, "ops", ("admin",))
    project_id, doomed = make_key(api.sessions, "doomed")
    with api.client_for(doomed) as client:
        checkpoint = upload(client, "/v1/checkpoints", "m.safetensors",
                            small_cnn_file.read_bytes())
    cancel = deletion.cancel_active_jobs
    rounds: list[list[str]] = []

    def job_created_after_the_first_round(session: Any, project: str) -> list[str]:
        rounds.append(cancel(session, project))
        if len(rounds) == 1:
            with api.sessions() as other:  # the request under way commits its job now
                insert_job(other, spec=digits_config(), checkpoint_id=checkpoint["id"],
                           project_id=project_id, max_active_jobs=5)
        return rounds[-1]

    monkeypatch.setattr(deletion, "cancel_active_jobs", job_created_after_the_first_round)
    with api.client_for(admin) as client:
        answer = client.delete("/v1/admin/projects/doomed?force=true")
    assert answer.status_code == 204, answer.text
    assert len(rounds) == 2 and len(rounds[1]) == 1  # the late job was cancelled, then deleted
    assert api.count_jobs() == 0 and api.stored_files() == []
