"""``/v1/webhooks`` over HTTP: register (secret shown once), list, read, delete, the delivery
log; SSRF refusal at registration; and a job's end delivered, signed and retried, by a real
Celery worker to a real receiver on 127.0.0.1 (allow-listed)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from persistence.models import WebhookDelivery, new_id, utcnow
from persistence.settings import Settings
from tests.api.helpers import Api, RecordingDispatcher, error_of, make_key
from tests.api.test_job_list_queries import add_jobs
from tests.service_fixtures import WorkerProcess, settings_from_env
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.service


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(statuses=[]).start()
    yield server
    server.stop()


@pytest.fixture
def allowing_api(api_settings: Settings, start_api: Callable[..., Api]) -> Api:
    settings = api_settings.model_copy(update={"webhook_allow_list": "127.0.0.1",
                                               "webhook_max_endpoints": 2})
    return start_api(settings, dispatcher=RecordingDispatcher())


def test_register_list_read_delete(allowing_api: Api, receiver: Receiver) -> None:
    api = allowing_api
    created = api.client.post("/v1/webhooks", json={"url": receiver.url,
                                                    "events": ["job.failed"]})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["secret"].startswith("whsec_") and len(body["secret"]) > 40
    assert body["events"] == ["job.failed"] and body["url"] == receiver.url
    hook_id = body["id"]

    listed = api.client.get("/v1/webhooks").json()["items"]
    assert [h["id"] for h in listed] == [hook_id]
    assert "secret" not in listed[0]  # shown once
    assert "secret" not in api.client.get(f"/v1/webhooks/{hook_id}").json()
    assert api.client.get(f"/v1/webhooks/{hook_id}/deliveries").json() == {"items": [],
                                                                         "next_cursor": None}

    # Before: a second endpoint for the same URL, so every message arrived twice.
    again = api.client.post("/v1/webhooks", json={"url": receiver.url})
    assert again.status_code == 409, again.text
    error = error_of(again)
    assert (error["code"], error["field"], error["webhook_id"]) == (
        "webhook_url_registered", "url", hook_id)
    assert hook_id in error["message"]

    second = api.client.post("/v1/webhooks", json={"url": receiver.url + "?second"})
    assert second.status_code == 201
    assert second.json()["events"] == ["job.cancelled", "job.failed", "job.succeeded"]
    assert second.json()["secret"] != body["secret"]
    third = api.client.post("/v1/webhooks", json={"url": receiver.url + "?third"})
    assert third.status_code == 409 and error_of(third)["code"] == "webhook_limit_reached"
    assert (error_of(third)["field"], error_of(third)["limit"], error_of(third)["used"]) == (
        "WEBHOOK_MAX_ENDPOINTS", 2, 2)

    # Paged like the job list, newest first. Before: one unpaged list.
    first_page = api.client.get("/v1/webhooks", params={"limit": 1}).json()
    assert [h["id"] for h in first_page["items"]] == [second.json()["id"]]
    rest = api.client.get("/v1/webhooks", params={"limit": 1,
                                                  "cursor": first_page["next_cursor"]}).json()
    assert [h["id"] for h in rest["items"]] == [hook_id] and rest["next_cursor"] is None
    foreign = api.client.get("/v1/jobs", params={"cursor": first_page["next_cursor"]})
    assert foreign.status_code == 422 and error_of(foreign)["field"] == "cursor"

    assert api.client.delete(f"/v1/webhooks/{hook_id}").status_code == 204
    for response in (api.client.get(f"/v1/webhooks/{hook_id}"),
                     api.client.delete(f"/v1/webhooks/{hook_id}"),
                     api.client.get(f"/v1/webhooks/{hook_id}/deliveries"),
                     api.client.get("/v1/webhooks/not-an-id")):
        assert response.status_code == 404
        assert error_of(response)["field"] == "webhook_id"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_one_endpoint_per_url_compares_urls_as_one_target(allowing_api: Api) -> None:
    api = allowing_api
    first = api.client.post("/v1/webhooks", json={"url": "http://127.0.0.1/Hook?a=%2f"})
    assert first.status_code == 201, first.text
    hook_id = first.json()["id"]
    # Before: each of these was a second endpoint for the same target (every message twice).
    for same in ("HTTP://127.0.0.1/Hook?a=%2f", "http://127.0.0.1:80/Hook?a=%2f",
                 "http://127.0.0.1/Hook?a=%2F", "http://127.0.0.1/Hook?a=%2f#frag",
                 "http://127.0.0.1./Hook?a=%2f"):
        again = api.client.post("/v1/webhooks", json={"url": same})
        assert again.status_code == 409, (same, again.text)
        assert (error_of(again)["code"], error_of(again)["webhook_id"]) == (
            "webhook_url_registered", hook_id)
    # The row keeps the URL as it was sent.
    assert api.client.get(f"/v1/webhooks/{hook_id}").json()["url"] == "http://127.0.0.1/Hook?a=%2f"
    # Path and query keep their case, and another port is another target.
    other = api.client.post("/v1/webhooks", json={"url": "http://127.0.0.1/hook?a=%2f"})
    assert other.status_code == 201, other.text
    assert api.client.delete(f"/v1/webhooks/{other.json()['id']}").status_code == 204
    port = api.client.post("/v1/webhooks", json={"url": "http://127.0.0.1:8080/Hook?a=%2f"})
    assert port.status_code == 201, port.text
    assert api.client.delete(f"/v1/webhooks/{port.json()['id']}").status_code == 204
    # An internationalised host, valid or not, is a 422 naming the URL here (it does not
    # resolve in the test), never a 500.
    for idn in ("https://b\u00fccher.invalid/x", "https://" + "\u00e4" * 70 + ".example/x"):
        refused = api.client.post("/v1/webhooks", json={"url": idn})
        assert refused.status_code == 422, (idn, refused.text)
        assert error_of(refused)["field"] == "url"


def test_comparable_url_forms() -> None:
    from persistence.outbound import comparable_url

    assert comparable_url("HTTPS://Host.Example:443") == "https://host.example/"
    assert comparable_url("https://B\u00fccher.example/P") == "https://xn--bcher-kva.example/P"
    assert comparable_url("https://xn--bcher-kva.example/P") == "https://xn--bcher-kva.example/P"
    assert comparable_url("http://[::1]:80/a") == "http://[::1]/a"
    assert comparable_url("http://[::1]:443/a") == "http://[::1]:443/a"
    assert comparable_url("https://h:80/a") == "https://h:80/a"
    assert comparable_url("http://h:99999/x") == "http://h:99999/x"  # unparsable: as sent


def test_concurrent_registrations_cannot_pass_the_limit(allowing_api: Api,
                                                        receiver: Receiver) -> None:
    # Before: each request counted the endpoints, then inserted, so 30 at once against a limit
    # of 20 left 26 registered. Now they count under the project's row lock.
    api = allowing_api
    start = threading.Barrier(8)

    def register(index: int) -> int:
        with api.client_for(api.key) as client:
            start.wait()
            return client.post("/v1/webhooks",
                               json={"url": f"{receiver.url}?n={index}"}).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(pool.map(register, range(8)))
    assert statuses == [201, 201] + [409] * 6
    assert len(api.client.get("/v1/webhooks").json()["items"]) == 2


def test_a_registration_sent_again_under_its_key_returns_the_first_with_its_secret(
        allowing_api: Api, receiver: Receiver) -> None:
    api = allowing_api
    body = {"url": receiver.url, "events": ["job.failed", "job.succeeded"]}
    first = api.client.post("/v1/webhooks", json=body, headers={"Idempotency-Key": "hook-1"})
    assert first.status_code == 201, first.text
    # A retry after a lost answer (events in another order: the same registration) learns the
    # secret it would otherwise have lost; nothing is registered twice.
    again = api.client.post("/v1/webhooks", json={**body, "events": body["events"][::-1]},
                            headers={"Idempotency-Key": "hook-1"})
    assert again.status_code == 200, again.text
    assert again.json() == first.json() and again.json()["secret"].startswith("whsec_")
    # Before: neither answer had a Location (the other creating routes send one).
    assert first.headers["location"] == again.headers["location"] == (
        f"/v1/webhooks/{first.json()['id']}")
    assert api.client.get(first.headers["location"]).json()["url"] == receiver.url
    other = api.client.post("/v1/webhooks", json={"url": receiver.url, "events": ["job.failed"]},
                            headers={"Idempotency-Key": "hook-1"})
    assert other.status_code == 409
    error = error_of(other)
    assert (error["code"], error["field"]) == ("idempotency_conflict", "Idempotency-Key")
    assert error["webhook_id"] == first.json()["id"]
    assert len(api.client.get("/v1/webhooks").json()["items"]) == 1

    start = threading.Barrier(4)

    def register() -> tuple[int, str]:
        with api.client_for(api.key) as client:
            start.wait()
            answer = client.post("/v1/webhooks", json={**body, "url": receiver.url + "?2"},
                                 headers={"Idempotency-Key": "hook-2"})
            return answer.status_code, answer.json()["id"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda _: register(), range(4)))
    assert sorted(status for status, _ in answers) == [200, 200, 200, 201]
    assert len({endpoint for _, endpoint in answers}) == 1
    assert len(api.client.get("/v1/webhooks").json()["items"]) == 2


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/hook", "http://10.0.0.8/hook", "http://169.254.169.254/latest/meta-data",
    "http://[::1]:8080/", "http://localhost/", "http://[::ffff:10.0.0.1]/",
    "ftp://example.com/", "http://user:secret@example.com/",
])
def test_ssrf_targets_are_refused_at_registration(api: Api, url: str) -> None:
    response = api.client.post("/v1/webhooks", json={"url": url})
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["field"] == "url" and error["code"] == "webhook_target_forbidden"
    assert api.client.get("/v1/webhooks").json()["items"] == []


@pytest.mark.parametrize(("body", "field"), [
    ({"url": "https://example.com/h", "events": ["job.started"]}, "events.0"),
    ({"url": "https://example.com/h", "events": []}, "events"),
    ({"url": "https://example.com/h", "extra": 1}, "extra"),
    ({"url": "https://example.com/" + "a" * 3000}, "url"),
    ({"url": 5}, "url"),
    ({}, "url"),
    (None, "body"),
    ([], "body"),
])
def test_bad_bodies_name_the_field(api: Api, body: dict[str, Any] | None, field: str) -> None:
    response = api.client.post("/v1/webhooks", json=body)
    assert response.status_code == 422
    assert error_of(response)["field"] == field


def test_a_mistyped_key_names_the_one_meant(api: Api) -> None:
    response = api.client.post("/v1/webhooks", json={"url": "https://example.com/h",
                                                     "evnts": ["job.succeeded"]})
    assert response.status_code == 422
    error = error_of(response)
    # Before: "Extra inputs are not permitted" (as every route but POST /v1/jobs still said).
    assert error["field"] == "evnts"
    assert "unknown setting 'evnts'; did you mean 'events'?" in error["message"]


def test_every_routes_422_says_what_was_sent_and_the_closest_choice(api: Api) -> None:
    # Before: a job spec's 422 said what was sent; webhooks, materialize, admin and the query
    # parameters only pydantic's "Input should be ..." (and no route suggested a choice).
    _, admin_key = make_key(api.sessions, "ops", ("admin",))
    with api.client_for(admin_key) as admin:
        for client, method, path, kwargs, field, said in [
            (api.client, "POST", "/v1/webhooks",
             {"json": {"url": "https://example.com/h", "events": ["job.succeded"]}}, "events.0",
             'got the text "job.succeded"; did you mean \'job.succeeded\'?'),
            (api.client, "POST", "/v1/webhooks", {"json": {"url": 5}}, "url",
             "got the number 5"),
            (api.client, "POST", f"/v1/jobs/{'0' * 32}/materialize", {"json": {"alpha": "0.5"}},
             "alpha", 'got the text "0.5" (write numbers without quotes)'),
            (admin, "POST", "/v1/admin/projects",
             {"json": {"name": "p", "max_active_jobs": 2.0}}, "max_active_jobs",
             "got the number 2.0 (write 2)"),
            (admin, "POST", "/v1/admin/projects/tests/keys", {"json": {"scopes": ["reed"]}},
             "scopes.0", 'got the text "reed"; did you mean \'read\'?'),
            (api.client, "GET", "/v1/checkpoints", {"params": {"format": "safetensor"}},
             "format", 'got the text "safetensor"; did you mean \'safetensors\'?'),
            (api.client, "GET", "/v1/datasets", {"params": {"limit": "12"}}, None, None),
            (api.client, "GET", "/v1/datasets", {"params": {"limit": "ten"}}, "limit",
             'got the text "ten"'),
        ]:
            response = client.request(method, path, **kwargs)
            if field is None:
                assert response.status_code == 200, response.text
                continue
            assert response.status_code == 422, (path, response.text)
            error = error_of(response)
            assert error["field"] == field, response.text
            assert said in error["message"], error["message"]
            assert "without quotes" not in error["message"] or method == "POST"


def test_a_cancelled_job_is_delivered_signed_and_retried_by_a_worker(
        service_env: dict[str, str], start_api: Callable[..., Api],
        start_worker: Callable[..., WorkerProcess], celery_queue: str,
        receiver: Receiver) -> None:
    webhook_env = {"WEBHOOK_QUEUE": celery_queue, "WEBHOOK_ALLOW_LIST": "127.0.0.1",
                   "WEBHOOK_RETRY_BASE_SECONDS": "0.5"}
    settings = settings_from_env({**service_env, **webhook_env})
    start_worker(**webhook_env)
    api = start_api(settings)  # the real Celery dispatcher
    receiver.statuses = [500, 200]
    hook = api.client.post("/v1/webhooks", json={"url": receiver.url}).json()
    job_id = add_jobs(api, 1, labels={"team": "a"})[0]

    assert api.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    deadline = time.monotonic() + 30
    while True:
        items = api.client.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["items"]
        if items and items[0]["status"] != "pending":
            break
        assert time.monotonic() < deadline, items
        time.sleep(0.2)
    [delivery] = items
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 2
    assert delivery["event_type"] == "job.cancelled" and delivery["job_id"] == job_id
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 200]
    first, second = (a["started_at"] for a in delivery["attempt_log"])
    assert first < second

    assert len(receiver.received) == 2
    for item in receiver.received:
        assert receiver.verify(item, hook["secret"])
        assert item.headers["webhook-id"] == delivery["id"]
    payload = json.loads(receiver.received[-1].body)
    assert payload["type"] == "job.cancelled"
    assert payload["data"]["job_id"] == job_id and payload["data"]["labels"]["team"] == "a"


def test_the_delivery_log_is_paged_by_cursor(allowing_api: Api, receiver: Receiver) -> None:
    """Before, ``/deliveries`` took no cursor: only the newest 100 messages could be read."""
    api = allowing_api
    hook_id = api.client.post("/v1/webhooks", json={"url": receiver.url}).json()["id"]
    start = utcnow()
    with api.sessions() as session:
        # Two to a created_at: ties are broken by id, so no page repeats or skips one.
        session.execute(insert(WebhookDelivery), [dict(
            id=new_id(), endpoint_id=hook_id, job_id=new_id(), event_type="job.succeeded",
            body="{}", status="succeeded", attempts=1, created_at=start + timedelta(seconds=i // 2),
            updated_at=start) for i in range(5)])
        session.commit()
    every = api.client.get(f"/v1/webhooks/{hook_id}/deliveries", params={"limit": 100}).json()
    assert len(every["items"]) == 5 and every["next_cursor"] is None
    paged, cursor = [], None
    while True:
        page = api.client.get(f"/v1/webhooks/{hook_id}/deliveries",
                              params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        paged += [item["id"] for item in page.json()["items"]]
        if (cursor := page.json()["next_cursor"]) is None:
            break
    assert paged == [item["id"] for item in every["items"]]
    assert api.client.post("/v1/webhooks", json={"url": receiver.url + "/b"}).status_code == 201
    webhooks_cursor = api.client.get("/v1/webhooks", params={"limit": 1}).json()["next_cursor"]
    for query, field, code, says in [
            ({"cursor": "garbage!"}, "cursor", "invalid_cursor", ""),
            ({"cursor": webhooks_cursor}, "cursor", "invalid_cursor", "it pages webhooks"),
            ({"limit": 101}, "limit", None, ""), ({"limit": 0}, "limit", None, "")]:
        response = api.client.get(f"/v1/webhooks/{hook_id}/deliveries", params=query)
        assert response.status_code == 422, response.text
        error = error_of(response)
        assert error["field"] == field and (code is None or error["code"] == code), error
        assert says in error["message"]
