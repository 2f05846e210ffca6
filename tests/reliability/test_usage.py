"""GET /v1/usage (and the admin's view of any project): the numbers the quota checks use, so a
project at a limit sees in its usage exactly what the 413 or 429 answer then says."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from api.limits import RedisRateLimiter
from persistence.models import Artifact, Job, Project
from persistence.records import recount_stored_bytes, stored_bytes
from persistence.settings import Settings
from tests.api.helpers import Api, RecordingDispatcher, free_port
from tests.reliability.conftest import create_job, tiny_npz, upload
from tests.reliability.helpers import inside_one_rate_window

pytestmark = [pytest.mark.service]


def _set_limits(api: Api, **limits: int) -> None:
    with api.sessions() as session:
        session.execute(update(Project).where(Project.id == api.project_id).values(**limits))
        session.commit()


def _usage(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/v1/usage")
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_usage_is_what_the_quota_answers_say(api: Api, small_cnn_file: Path,
                                            clients: Callable[..., httpx.Client]) -> None:
    settings = api.settings
    empty = _usage(api.client)
    window = empty.pop("requests_this_minute")
    assert window["limit"] == settings.default_max_requests_per_minute
    assert window["counted_in"] == "process" and window["used"] >= 1  # this request counted
    assert empty.pop("event_streams") == {
        "open_by_this_key": 0, "open_by_project": 0,
        "limit_per_key": settings.default_max_streams_per_key, "counted_in": "process"}
    assert empty == {
        "project": "tests",
        "stored_bytes": {"used": 0, "limit": settings.default_max_stored_bytes, "checkpoints": 0,
                         "datasets": 0, "artifacts": 0, "reserved_by_active_jobs": 0,
                         "reserved_by_materializations": 0},
        "active_jobs": {"used": 0, "limit": settings.default_max_active_jobs},
        "pending_materializations": {"used": 0, "limit": settings.materialize_max_pending},
        "max_job_cost": settings.default_max_job_cost,
        "max_job_gflop": settings.default_max_job_gflop,
        "max_requests_per_minute": settings.default_max_requests_per_minute,
        "max_streams_per_key": settings.default_max_streams_per_key}

    size = small_cnn_file.stat().st_size
    checkpoint = upload(api.client, "/v1/checkpoints", "m.safetensors", small_cnn_file.read_bytes())
    dataset = upload(api.client, "/v1/datasets", "d.npz", tiny_npz())
    finished = create_job(api.client, checkpoint["id"]).json()
    queued = create_job(api.client, checkpoint["id"]).json()
    with api.sessions() as session:  # the first job ended with one artifact
        session.execute(update(Job).where(Job.id == finished["id"]).values(status="succeeded"))
        session.add(Artifact(job_id=finished["id"], name="finetuned.safetensors",
                             storage_key="k", size=1000, sha256="0" * 64,
                             content_type="application/octet-stream"))
        session.commit()
        # Written by hand, not by the worker's writers: the recount brings the quota's ledger
        # to these rows, as those writers would have.
        recount_stored_bytes(session, api.project_id, repair=True)
    # A materialization of the finished job reserves a θ_FT-sized file until it is made.
    assert api.client.post(f"/v1/jobs/{finished['id']}/materialize",
                           json={"alpha": 0.3}).status_code == 202
    usage = _usage(clients("tests", ("read",)))  # a read-only key sees it too
    stored = usage["stored_bytes"]
    assert stored == {"used": size + dataset["size"] + 1000 + 2 * size + 1000,
                      "limit": settings.default_max_stored_bytes, "checkpoints": size,
                      "datasets": dataset["size"], "artifacts": 1000,
                      "reserved_by_active_jobs": 2 * size, "reserved_by_materializations": 1000}
    with api.sessions() as session:
        assert stored["used"] == stored_bytes(session, api.project_id)
    assert usage["active_jobs"]["used"] == 1 and queued["status"] == "queued"
    assert usage["pending_materializations"]["used"] == 1

    # At the limits, the refusals name the same numbers.
    _set_limits(api, max_stored_bytes=stored["used"] + size - 1, max_active_jobs=1,
                max_job_cost=987_654_321, max_job_gflop=123_456_789,
                max_requests_per_minute=1000, max_streams_per_key=3)
    usage = _usage(api.client)
    assert usage["stored_bytes"]["limit"] == stored["used"] + size - 1
    assert (usage["max_job_cost"], usage["max_job_gflop"], usage["max_requests_per_minute"],
            usage["max_streams_per_key"]) == (987_654_321, 123_456_789, 1000, 3)
    refused = api.client.post("/v1/checkpoints",
                              files={"file": ("n.safetensors", small_cnn_file.read_bytes())})
    assert refused.status_code == 413, refused.text
    error = refused.json()["error"]
    assert (error["used"], error["limit"]) == (usage["stored_bytes"]["used"],
                                               usage["stored_bytes"]["limit"])
    busy = create_job(api.client, checkpoint["id"])
    assert busy.status_code == 429, busy.text
    assert (busy.json()["error"]["used"], busy.json()["error"]["limit"]) == (
        usage["active_jobs"]["used"], usage["active_jobs"]["limit"])

    # Cancelling the queued job gives back its slot and its reservation.
    assert api.client.post(f"/v1/jobs/{queued['id']}/cancel").status_code in (200, 202)
    after = _usage(api.client)
    assert after["active_jobs"]["used"] == 0
    assert after["stored_bytes"]["used"] == stored["used"] - 2 * size
    assert after["stored_bytes"]["reserved_by_active_jobs"] == 0


def test_each_project_sees_its_own_usage(api: Api, small_cnn_file: Path,
                                        clients: Callable[..., httpx.Client]) -> None:
    upload(api.client, "/v1/checkpoints", "m.safetensors", small_cnn_file.read_bytes())
    other = _usage(clients("other-team", ("read",)))
    assert other["project"] == "other-team" and other["stored_bytes"]["used"] == 0
    assert _usage(api.client)["stored_bytes"]["checkpoints"] == small_cnn_file.stat().st_size


def test_admin_view_of_a_projects_usage(api: Api, small_cnn_file: Path,
                                        clients: Callable[..., httpx.Client]) -> None:
    upload(api.client, "/v1/checkpoints", "m.safetensors", small_cnn_file.read_bytes())
    _set_limits(api, max_active_jobs=4)
    admin = clients("ops", ("admin",))
    seen = admin.get("/v1/admin/projects/tests/usage")
    assert seen.status_code == 200, seen.text
    own = _usage(api.client)
    live = ("requests_this_minute", "event_streams")  # compared below
    assert {k: v for k, v in seen.json().items() if k not in live} == {
        k: v for k, v in own.items() if k not in live}
    # The admin's requests count against its own project, not this one; no key of its own here.
    assert seen.json()["event_streams"] == {**own["event_streams"], "open_by_this_key": None}
    assert seen.json()["requests_this_minute"]["limit"] == own["requests_this_minute"]["limit"]
    assert seen.json()["active_jobs"]["limit"] == 4
    missing = admin.get("/v1/admin/projects/nobody/usage")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "project_not_found"
    assert missing.json()["error"]["field"] == "name"
    denied = api.client.get("/v1/admin/projects/tests/usage")  # read and write, not admin
    assert denied.status_code == 403 and denied.json()["error"]["required_scope"] == "admin"


def _same_window(first: dict[str, Any], second: dict[str, Any]) -> bool:
    """Whether two usage answers' request counts come from one rate window (it resets on the
    wall-clock minute)."""
    return (second["requests_this_minute"]["resets_in_seconds"]
            <= first["requests_this_minute"]["resets_in_seconds"])


def test_usage_counts_the_requests_of_the_current_minute(
        api: Api, clients: Callable[..., httpx.Client]) -> None:
    inside_one_rate_window(5.0)
    first = _usage(api.client)
    reader = clients("tests", ("read",))  # another key of the project: one count per project
    for _ in range(3):
        assert reader.get("/v1/jobs").status_code == 200
    assert clients("other-team").get("/v1/jobs").status_code == 200  # another project's
    second = _usage(api.client)
    assert _same_window(first, second)
    assert second["requests_this_minute"]["used"] == first["requests_this_minute"]["used"] + 4
    assert 0 < second["requests_this_minute"]["resets_in_seconds"] <= 60

    # At the limit, the refusal comes after exactly the counted number.
    _set_limits(api, max_requests_per_minute=second["requests_this_minute"]["used"] + 2)
    third = _usage(api.client)
    assert third["requests_this_minute"]["used"] == third["requests_this_minute"]["limit"] - 1
    assert api.client.get("/v1/jobs").status_code == 200
    refused = api.client.get("/v1/usage")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"


def test_usage_reads_the_shared_count_in_redis(
        reliability_settings: Settings, start_api: Callable[..., Api],
        redis_broker_url: str) -> None:
    # Two API processes' worth of apps: either one's usage counts the other's requests.
    first = start_api(reliability_settings, dispatcher=RecordingDispatcher(),
                      rate_limiter=RedisRateLimiter(redis_broker_url))
    second = start_api(reliability_settings, dispatcher=RecordingDispatcher(),
                       rate_limiter=RedisRateLimiter(redis_broker_url))
    client = second.client_for(first.key)
    inside_one_rate_window(5.0)
    before = _usage(first.client)
    assert before["requests_this_minute"]["counted_in"] == "shared"
    for _ in range(2):
        assert client.get("/v1/jobs").status_code == 200
    after = _usage(client)
    client.close()
    assert _same_window(before, after)
    assert after["requests_this_minute"]["used"] == before["requests_this_minute"]["used"] + 3


def test_an_unreachable_redis_counter_is_unknown_not_zero() -> None:
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0")
    try:
        window = limiter.current("project:x")
    finally:
        limiter.close()
    assert window.used is None and window.counted_in == "shared"
    assert 0 < window.resets_in_seconds <= 60


def test_usage_counts_the_open_event_streams(api: Api, small_cnn_file: Path,
                                            clients: Callable[..., httpx.Client]) -> None:
    checkpoint = upload(api.client, "/v1/checkpoints", "m.safetensors",
                        small_cnn_file.read_bytes())
    job = create_job(api.client, checkpoint["id"]).json()  # stays queued: the stream stays open
    url = f"{api.url}/v1/jobs/{job['id']}/events"
    headers = {"Authorization": f"Bearer {api.key}", "Accept": "text/event-stream"}
    opened, done = threading.Event(), threading.Event()

    def hold() -> None:
        with httpx.stream("GET", url, headers=headers, timeout=30) as response:
            assert response.status_code == 200
            opened.set()
            done.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert opened.wait(10)
        streams = _usage(api.client)["event_streams"]
        assert (streams["open_by_this_key"], streams["open_by_project"]) == (1, 1)
        other_key = _usage(clients("tests", ("read",)))["event_streams"]
        assert (other_key["open_by_this_key"], other_key["open_by_project"]) == (0, 1)
        assert _usage(clients("other-team"))["event_streams"]["open_by_project"] == 0
        admin = clients("ops", ("admin",)).get("/v1/admin/projects/tests/usage").json()
        assert admin["event_streams"]["open_by_project"] == 1
    finally:
        done.set()
        holder.join(10)
    deadline = time.monotonic() + 10  # the slot is given back when the connection closes
    while _usage(api.client)["event_streams"]["open_by_project"] != 0:
        assert time.monotonic() < deadline, "the closed stream is still counted"
        time.sleep(0.1)
