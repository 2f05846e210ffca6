"""CORS (:mod:`api.cors`), over HTTP to the API under uvicorn: off by default; preflights of the
allowed origins answered with the path's methods and the headers the API reads; every answer
to them, errors included, readable by the page; other origins get no CORS header; a malformed
``CORS_ALLOW_ORIGINS`` stops the start naming it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.main import create_app
from api.validation import Validator
from persistence.db import session_factory_from_settings
from persistence.settings import Settings
from tests.api.helpers import Api, ApiServer, RecordingDispatcher, error_of, make_key

pytestmark = [pytest.mark.service,
              pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

ROOT = Path(__file__).parents[2]
CONSOLE = "https://console.example"
JOB_ID = "0123456789abcdef0123456789abcdef"


def _preflight(method: str, headers: str = "authorization",
               origin: str = CONSOLE) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers}


def _cors_headers(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items()
            if name.startswith("access-control-")}


def _exposed(response: httpx.Response) -> set[str]:
    return {name.strip().lower()
            for name in response.headers["access-control-expose-headers"].split(",")}


@pytest.fixture
def cors_api(api_settings: Settings, start_api: Callable[..., Api]) -> Api:
    settings = api_settings.model_copy(update={
        "cors_allow_origins": [CONSOLE, "http://localhost:3000"],
        "default_max_requests_per_minute": 12})
    return start_api(settings, dispatcher=RecordingDispatcher())


def test_cors_is_off_by_default(api: Api) -> None:
    anonymous = api.client_for(None)
    preflight = anonymous.options("/v1/jobs", headers=_preflight("POST"))
    # The plain OPTIONS answer (was a 405): the browser refuses for want of the CORS headers.
    assert preflight.status_code == 204, preflight.text
    assert preflight.headers["allow"] == "GET, HEAD, POST, OPTIONS"
    assert _cors_headers(preflight) == {}
    listed = api.client.get("/v1/jobs", headers={"Origin": CONSOLE})
    assert listed.status_code == 200 and _cors_headers(listed) == {}
    assert "vary" not in listed.headers


def test_a_preflight_from_an_allowed_origin_gets_the_paths_methods(cors_api: Api) -> None:
    anonymous = cors_api.client_for(None)  # a preflight carries no key
    response = anonymous.options("/v1/jobs", headers=_preflight(
        "POST", "authorization, content-type, idempotency-key"))
    assert response.status_code == 204, response.text
    assert response.headers["access-control-allow-origin"] == CONSOLE
    assert response.headers["access-control-allow-methods"] == "GET, HEAD, POST, OPTIONS"
    assert response.headers["allow"] == "GET, HEAD, POST, OPTIONS"
    allowed = {name.strip().lower()
               for name in response.headers["access-control-allow-headers"].split(",")}
    # Every request header the API reads.
    assert allowed >= {"authorization", "content-type", "content-encoding", "idempotency-key",
                       "if-match", "if-none-match", "if-modified-since", "if-unmodified-since",
                       "if-range", "range", "last-event-id", "x-request-id"}
    assert int(response.headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in response.headers
    assert response.headers["vary"] == "Origin"
    # PATCH (a project's limits) and If-Unmodified-Since (a job's DELETE): refused before, as
    # the preflight's methods were GET, POST, DELETE for every path.
    patch = anonymous.options("/v1/admin/projects/tests", headers=_preflight(
        "PATCH", "authorization, if-match, content-type"))
    assert patch.status_code == 204
    assert patch.headers["access-control-allow-methods"] == "GET, HEAD, PATCH, DELETE, OPTIONS"
    second = anonymous.options(f"/v1/jobs/{JOB_ID}", headers=_preflight(
        "DELETE", "authorization, if-unmodified-since", origin="http://localhost:3000"))
    assert second.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "if-unmodified-since" in second.headers["access-control-allow-headers"].lower()
    # A path no route has: the preflight passes with the server's methods, so that the page's
    # request reaches the API and reads its 404.
    unknown = anonymous.options("/v1/nothing-here", headers=_preflight("GET"))
    assert unknown.status_code == 204
    assert unknown.headers["access-control-allow-methods"] == (
        "GET, HEAD, POST, PATCH, DELETE, OPTIONS")
    assert "allow" not in unknown.headers
    missing = anonymous.get("/v1/nothing-here", headers={"Origin": CONSOLE})
    assert missing.status_code == 404 and error_of(missing)["field"] == "path"
    assert missing.headers["access-control-allow-origin"] == CONSOLE


def test_a_preflight_is_logged_counted_and_carries_a_request_id(
        cors_api: Api, caplog: pytest.LogCaptureFixture) -> None:
    """The CORS layer answers a preflight itself; it sat outside the observability middleware,
    so the answer had no X-Request-ID, no log line and no count (a plain OPTIONS had all)."""
    caplog.set_level(logging.INFO, logger="api.observability")
    anonymous = cors_api.client_for(None)
    given = anonymous.options("/v1/jobs", headers={**_preflight("POST"),
                                                  "X-Request-ID": "preflight-1"})
    assert given.status_code == 204, given.text
    assert given.headers["access-control-allow-origin"] == CONSOLE
    assert given.headers["x-request-id"] == "preflight-1"
    made = anonymous.options("/v1/jobs", headers=_preflight("GET"))
    assert len(made.headers["x-request-id"]) == 32
    # The layer logs and counts once the app has returned, which may be just after the client
    # has read the answer's last byte: wait for the second record rather than race it.
    deadline = time.monotonic() + 10
    while True:
        logged = [r for r in caplog.records if r.name == "api.observability"
                  and getattr(r, "method", None) == "OPTIONS"
                  and getattr(r, "status", None) == 204]
        if len(logged) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert [r.path for r in logged] == ["/v1/jobs", "/v1/jobs"]  # type: ignore[attr-defined]
    samples = [s for f in text_string_to_metric_families(cors_api.client.get("/metrics").text)
               for s in f.samples if s.name == "rift_http_requests_total"
               and s.labels["method"] == "OPTIONS" and s.labels["status"] == "204"]
    assert sum(s.value for s in samples) == 2


def test_another_origin_gets_no_cors_headers(cors_api: Api) -> None:
    anonymous = cors_api.client_for(None)
    for origin in ("https://evil.example", "https://console.example.evil", "null",
                   "https://CONSOLE.example:443"):  # not how a browser writes an origin
        preflight = anonymous.options("/v1/jobs", headers=_preflight("POST", origin=origin))
        # Was Starlette's plain-text 400 "Disallowed CORS origin", with the allowed methods
        # and headers in it. Now the plain OPTIONS answer, no CORS header: the browser refuses.
        assert preflight.status_code == 204, (origin, preflight.text)
        assert preflight.headers["allow"] == "GET, HEAD, POST, OPTIONS"
        assert _cors_headers(preflight) == {}, origin
        listed = cors_api.client.get("/v1/jobs", headers={"Origin": origin})
        assert listed.status_code == 200 and _cors_headers(listed) == {}
        assert listed.headers["vary"] == "Origin"
    # Two Origin headers come from no browser: neither is trusted.
    twice = cors_api.client.get("/v1/jobs", headers=[("Origin", CONSOLE), ("Origin", CONSOLE)])
    assert _cors_headers(twice) == {}


def test_answers_and_errors_carry_the_origin_and_readable_headers(cors_api: Api) -> None:
    page = {"Origin": CONSOLE}
    listed = cors_api.client.get("/v1/jobs", headers=page)
    assert listed.status_code == 200
    assert listed.headers["access-control-allow-origin"] == CONSOLE
    # A page reads the ETag (to revalidate), X-Request-ID (to report), Retry-After (to wait).
    assert _exposed(listed) >= {"etag", "location", "retry-after", "content-range",
                                "content-disposition", "accept-ranges", "allow",
                                "www-authenticate", "x-request-id"}
    assert listed.headers["vary"] == "Origin"
    anonymous = cors_api.client_for(None)
    errors = {
        401: anonymous.get("/v1/jobs", headers=page),
        404: cors_api.client.get(f"/v1/jobs/{JOB_ID}", headers=page),
        405: cors_api.client.put("/v1/jobs", headers=page),
        422: cors_api.client.get("/v1/jobs", params={"nope": "1"}, headers=page),
        # Answered by a middleware, before routing.
        417: cors_api.client.get("/v1/jobs", headers={**page, "Expect": "fancy"}),
    }
    for status, response in errors.items():
        assert response.status_code == status, (status, response.text)
        assert response.headers["access-control-allow-origin"] == CONSOLE, status
        assert "x-request-id" in _exposed(response), status
        assert error_of(response)["code"], status
    # The rate limit's 429 (12 a minute): a page must read its Retry-After.
    for _ in range(20):
        limited = cors_api.client.get("/v1/jobs", headers=page)
        if limited.status_code == 429:
            break
    assert limited.status_code == 429, limited.text
    assert limited.headers["access-control-allow-origin"] == CONSOLE
    assert "retry-after" in _exposed(limited) and "retry-after" in limited.headers


def test_any_origin_with_a_star(api_settings: Settings, start_api: Callable[..., Api]) -> None:
    api = start_api(api_settings.model_copy(update={"cors_allow_origins": ["*"]}),
                    dispatcher=RecordingDispatcher())
    preflight = api.client_for(None).options(
        "/v1/jobs", headers=_preflight("GET", origin="https://anywhere.example"))
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in preflight.headers
    listed = api.client.get("/v1/jobs", headers={"Origin": "https://anywhere.example"})
    assert listed.headers["access-control-allow-origin"] == "*"
    # The same answer for every origin: nothing for a cache to keep apart.
    assert "vary" not in listed.headers


@pytest.fixture
def failing_api(api_settings: Settings, shared_validator: Validator) -> Iterator[str]:
    """The API with one more route that raises (a bug), served over HTTP: its URL."""
    settings = api_settings.model_copy(update={"cors_allow_origins": [CONSOLE]})
    sessions = session_factory_from_settings(settings)
    app = create_app(settings, session_factory=sessions, validator=shared_validator,
                     dispatcher=RecordingDispatcher())

    def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/broken", broken)
    make_key(sessions, "tests")
    server = ApiServer(app).start()
    try:
        yield server.url
    finally:
        server.stop()
        sessions.kw["bind"].dispose()


def test_an_unexpected_error_carries_the_origin(failing_api: str) -> None:
    response = httpx.get(f"{failing_api}/broken", headers={"Origin": CONSOLE}, timeout=60)
    assert response.status_code == 500
    assert error_of(response)["code"] == "internal_error"
    # Was missing: Starlette's CORSMiddleware sat inside the layer that sends the 500.
    assert response.headers["access-control-allow-origin"] == CONSOLE
    # And a request id: the observability layer sat inside the one that sends the 500.
    assert len(response.headers["x-request-id"]) == 32


def _start(origins: str, tmp_path: Path, sqlite_url: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items()
           if name.lower() not in Settings.model_fields}
    env.update(PYTHONPATH=str(ROOT), CORS_ALLOW_ORIGINS=origins, DATABASE_URL=sqlite_url,
               BROKER_URL="memory://", STORE_ROOT=str(tmp_path / "objects"),
               VALIDATION_WARM_START="false")
    code = ("from api.main import create_app\n"
            "app = create_app()\n"
            "print(sorted(app.cors_policy.origins))\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_setting_is_read_comma_separated_and_a_malformed_one_stops_the_start(
        tmp_path: Path, database_url: str) -> None:
    sqlite_url = database_url  # a migrated SQLite file (the module's parameter)
    started = _start(f"{CONSOLE}/, http://LOCALHOST:3000", tmp_path, sqlite_url)
    # Was "CORS_ALLOW_ORIGINS: not valid JSON": the setting took a JSON list only.
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == f"['http://localhost:3000', '{CONSOLE}']"
    # The other malformed forms are refused in-process (tests/persistence/test_settings.py's
    # BAD_VALUES): one start is enough to show a refusal stops it with one line.
    stopped = _start(f"{CONSOLE}/app", tmp_path, sqlite_url)
    assert stopped.returncode == 1, stopped.stdout
    lines = stopped.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "rift: invalid settings: CORS_ALLOW_ORIGINS: "), stopped.stderr
    assert f"did you mean '{CONSOLE}'?" in lines[0], lines[0]
