"""Keys: the header is the only way in (401 otherwise, with the Bearer challenge), scopes are
enforced (403 naming the scope), revoked keys stop working, use is recorded once a minute, a
cross-site form POST cannot cancel a job, and CORS is off unless configured."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from persistence.api_keys import revoke_key
from persistence.models import ApiKey
from persistence.settings import Settings
from tests.api.helpers import Api, RecordingDispatcher, make_key, readyz_once_started
from tests.reliability.conftest import create_job, upload

pytestmark = [pytest.mark.service]

OPEN_PATHS = {"/v1/healthz", "/v1/readyz"}
#: Operators' Prometheus metrics: open unless METRICS_TOKEN is set (tests/api/test_observability.py).
OPERATOR_PATHS = {"/metrics"}


def _every_route(api: Api) -> list[tuple[str, str]]:
    paths = api.client.get("/openapi.json").json()["paths"]
    return [(method.upper(), re.sub(r"\{\w+\}", "x" * 32, path))
            for path, operations in paths.items() for method in operations
            if path not in OPEN_PATHS | OPERATOR_PATHS]


def test_every_route_needs_a_key(api: Api) -> None:
    anonymous = api.client_for(None)
    routes = _every_route(api)
    assert len(routes) >= 20
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer rift_0123456789ab_" + "A" * 43},
                        {"Authorization": "Bearer not-a-key"}, {"Authorization": "Basic dXNlcg=="},
                        {"Cookie": f"Authorization=Bearer {api.key}"}):
            response = anonymous.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["error"]["code"] == "unauthorized"
        # A key in the query string is not read either.
        assert anonymous.request(method, path, params={"api_key": api.key}).status_code == 401
    # Two Authorization headers, the valid key first or last. Before: the first was used (200).
    for keys in ((api.key, "not-a-key"), ("not-a-key", api.key), (api.key, api.key)):
        response = httpx.get(f"{api.url}/v1/jobs",
                             headers=[("Authorization", f"Bearer {key}") for key in keys])
        assert response.status_code == 401, (keys, response.text)
        error = response.json()["error"]
        assert error["field"] == "Authorization" and "2 Authorization headers" in error["message"]
    readyz_once_started(api)  # the validator the API started with itself serves: ready
    for path in OPEN_PATHS | {"/healthz", "/readyz", "/docs", "/openapi.json"}:
        assert anonymous.get(path).status_code == 200, path
    anonymous.close()


def test_scopes(api: Api, clients: Callable[..., httpx.Client], small_cnn_file: Path) -> None:
    checkpoint = upload(api.client, "/v1/checkpoints", "m.safetensors",
                        small_cnn_file.read_bytes())
    job = create_job(api.client, checkpoint["id"]).json()
    reader = clients("tests", ("read",))
    assert reader.get(f"/v1/jobs/{job['id']}").status_code == 200
    for response in (reader.post(f"/v1/jobs/{job['id']}/cancel"),
                     reader.delete(f"/v1/checkpoints/{checkpoint['id']}"),
                     create_job(reader, checkpoint["id"])):
        assert response.status_code == 403, response.text
        error = response.json()["error"]
        assert error["code"] == "insufficient_scope" and error["required_scope"] == "write"
        assert "'write'" in error["message"]
    # write implies read but not admin
    for response in (api.client.get("/v1/admin/projects"),
                     api.client.post("/v1/admin/projects", json={"name": "x"})):
        assert response.status_code == 403
        assert response.json()["error"]["required_scope"] == "admin"
    # A read key on an admin route is told the scope that would let it through (before:
    # 'write' on POST and DELETE, then 'admin' once it had write).
    for response in (reader.post("/v1/admin/projects", json={"name": "x"}),
                     reader.delete("/v1/admin/projects/tests/keys/" + "0" * 32),
                     reader.get("/v1/admin/workers")):
        assert response.status_code == 403
        assert response.json()["error"]["required_scope"] == "admin", response.text
    admin = clients("ops", ("admin",))
    assert admin.get("/v1/admin/projects").status_code == 200
    assert admin.get("/v1/jobs").status_code == 200  # admin implies read (its own project)


def test_revoked_key_is_refused_at_once(api: Api, clients: Callable[..., httpx.Client]) -> None:
    client = clients("tests")
    assert client.get("/v1/jobs").status_code == 200
    with api.sessions() as session:
        key_id = session.execute(select(ApiKey.id).order_by(ApiKey.created_at.desc())
                                 ).scalars().first()
        assert key_id is not None
        revoke_key(session, key_id)
    response = client.get("/v1/jobs")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert api.client.get("/v1/jobs").status_code == 200  # the project's other key still works


def test_an_open_event_stream_closes_when_its_key_is_revoked(
        api: Api, clients: Callable[..., httpx.Client], small_cnn_file: Path) -> None:
    # Before: a stream opened before the revocation went on sending the job's events until the
    # job ended (hours), though every new request of the key was refused.
    from persistence.jobs import append_event

    checkpoint = upload(api.client, "/v1/checkpoints", "m.safetensors",
                        small_cnn_file.read_bytes())
    job = create_job(api.client, checkpoint["id"]).json()
    _, key = make_key(api.sessions, "tests")
    lines: list[str] = []
    opened = threading.Event()

    def follow() -> None:
        with httpx.stream("GET", f"{api.url}/v1/jobs/{job['id']}/events", timeout=30, headers={
                "Authorization": f"Bearer {key}", "Accept": "text/event-stream"}) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                lines.append(line)
                if line.startswith("data:"):
                    opened.set()

    follower = threading.Thread(target=follow)
    follower.start()
    assert opened.wait(10)  # job_created was sent
    with api.sessions() as session:
        key_id = session.execute(select(ApiKey.id).where(ApiKey.prefix == key.split("_")[1])
                                 ).scalar_one()
        revoke_key(session, key_id)
        append_event(session, job["id"], "warning", {"message": "after the revocation"})
        session.commit()
    follower.join(15)
    assert not follower.is_alive(), "the stream stayed open after its key was revoked"
    assert not any("after the revocation" in line for line in lines), lines
    assert "event: end" not in lines  # not an end of the job: a client reconnects, gets 401
    again = api.client_for(key).get(f"/v1/jobs/{job['id']}/events")
    assert again.status_code == 401


def test_last_used_at_is_recorded_at_most_once_a_minute(api: Api) -> None:
    def last_used() -> object:
        with api.sessions() as session:
            return session.execute(select(ApiKey.last_used_at)).scalar_one()

    assert last_used() is None
    assert api.client.get("/v1/jobs").status_code == 200
    first = last_used()
    assert first is not None
    assert api.client.get("/v1/jobs").status_code == 200
    assert last_used() == first  # within the minute: no write
    with api.sessions() as session:  # a minute later
        session.execute(update(ApiKey).values(last_used_at=first - timedelta(minutes=2)))
        session.commit()
    assert api.client.get("/v1/jobs").status_code == 200
    assert last_used() > first  # type: ignore[operator]


def test_a_cross_site_form_post_cannot_cancel(api: Api, small_cnn_file: Path) -> None:
    checkpoint = upload(api.client, "/v1/checkpoints", "m.safetensors",
                        small_cnn_file.read_bytes())
    job = create_job(api.client, checkpoint["id"]).json()
    browser = api.client_for(None)
    # What a page on another site can make a browser send: a form, cookies, no custom header.
    for content_type, body in (("application/x-www-form-urlencoded", b"a=1"),
                               ("multipart/form-data; boundary=x", b"--x--\r\n"),
                               ("text/plain", b"hi")):
        response = browser.post(f"/v1/jobs/{job['id']}/cancel", content=body,
                                headers={"Content-Type": content_type,
                                         "Origin": "https://evil.example"})
        assert response.status_code == 401
        assert "access-control-allow-origin" not in response.headers
    browser.close()
    # Even with a key, a form body where JSON (or nothing) is expected is refused.
    response = api.client.post(f"/v1/jobs/{job['id']}/cancel", content=b"a=1",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    assert "application/x-www-form-urlencoded" in response.json()["error"]["message"]
    assert api.client.get(f"/v1/jobs/{job['id']}").json()["cancel_requested"] is False
    assert api.client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200


def test_cors_only_for_configured_origins(reliability_settings: Settings,
                                          start_api: Callable[..., Api]) -> None:
    closed = start_api(reliability_settings, dispatcher=RecordingDispatcher())
    preflight = {"Origin": "https://console.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"}
    response = closed.client.options("/v1/jobs", headers=preflight)
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-origin" not in closed.client.get(
        "/v1/jobs", headers={"Origin": "https://console.example"}).headers

    settings = reliability_settings.model_copy(
        update={"cors_allow_origins": ["https://console.example"]})
    opened = start_api(settings, dispatcher=RecordingDispatcher())
    response = opened.client.options("/v1/jobs", headers=preflight)
    assert response.headers["access-control-allow-origin"] == "https://console.example"
    assert "access-control-allow-credentials" not in response.headers
    # A page may revalidate (If-None-Match) and read the ETag. Before: the preflight refused
    # the header, and the ETag was hidden from the page.
    revalidating = opened.client.options("/v1/jobs", headers={
        **preflight, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, if-none-match"})
    assert revalidating.status_code == 204, revalidating.text
    listed = opened.client.get("/v1/jobs", headers={"Origin": "https://console.example"})
    assert "etag" in listed.headers["access-control-expose-headers"].lower()
    other = opened.client.get("/v1/jobs", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
