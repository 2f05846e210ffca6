"""The API's request ids, /metrics (open, or behind METRICS_TOKEN) and the materialize route's
refusals, against a real server and database (jobs stay queued: no worker)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from persistence.settings import Settings
from tests.api.helpers import Api, RecordingDispatcher, digits_config, error_of, upload_checkpoint
from tests.service_fixtures import settings_from_env


def _settings(sqlite_url: str, tmp_path: Path, **extra: str) -> Settings:
    return settings_from_env({"DATABASE_URL": sqlite_url, "BROKER_URL": "memory://",
                              "STORE_KIND": "local", "STORE_ROOT": str(tmp_path / "objects"),
                              "WORK_DIR": str(tmp_path / "work"), **extra})


@pytest.fixture
def local_api(sqlite_url: str, tmp_path: Path, start_api: Callable[..., Api]) -> Api:
    return start_api(_settings(sqlite_url, tmp_path), dispatcher=RecordingDispatcher())


def test_request_ids_are_echoed_or_generated(local_api: Api) -> None:
    given = local_api.client.get("/healthz", headers={"X-Request-ID": "abc-1"})
    assert given.headers["x-request-id"] == "abc-1"
    unsafe = local_api.client.get("/healthz", headers={"X-Request-ID": "has space"})
    assert unsafe.headers["x-request-id"] not in ("", "has space")
    missing = local_api.client.get("/v1/jobs/none")
    assert missing.status_code == 404 and len(missing.headers["x-request-id"]) == 32


def test_metrics_count_requests_by_route_template(local_api: Api, small_cnn_file: Path) -> None:
    upload_checkpoint(local_api, small_cnn_file)
    for job_id in ("a", "b", "c"):
        local_api.client.get(f"/v1/jobs/{job_id}")
    local_api.client.get("/no/such/path")
    local_api.client.get("/v1/jobs/jobs")  # a job id equal to a literal segment of the path
    response = local_api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    requests = {tuple(sorted(s.labels.items())): s.value
                for s in families["rift_http_requests"].samples if s.name.endswith("_total")}
    # Was "/v1/{job_id}/{job_id}" for /v1/jobs/jobs: segments matched by value, not position.
    assert requests[(("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "404"))] == 4
    assert {route for (_, (_, route), _) in requests} <= {
        "/v1/checkpoints", "/v1/jobs/{job_id}", "<unmatched>", "/metrics"}
    assert requests[(("method", "GET"), ("route", "<unmatched>"), ("status", "404"))] == 1
    # A HEAD is counted under the route it matched (before: "<unmatched>").
    assert local_api.client.head("/v1/jobs/a").status_code == 404
    local_api.client.head("/healthz")
    families = {f.name: f for f in text_string_to_metric_families(local_api.client.get(
        "/metrics").text)}
    requests = {tuple(sorted(s.labels.items())): s.value
                for s in families["rift_http_requests"].samples if s.name.endswith("_total")}
    assert requests[(("method", "HEAD"), ("route", "/v1/jobs/{job_id}"), ("status", "404"))] == 1
    assert requests[(("method", "HEAD"), ("route", "/healthz"), ("status", "200"))] == 1
    # Valid exposition: every sample parses, none is repeated.
    series = [(s.name, tuple(sorted(s.labels.items())))
              for f in families.values() for s in f.samples]
    assert len(series) == len(set(series))
    uploaded = [s.value for s in families["rift_upload_bytes"].samples
                if s.name == "rift_upload_bytes_total" and s.labels == {"kind": "checkpoint"}]
    assert uploaded and uploaded[0] >= small_cnn_file.stat().st_size


def test_metrics_count_unusual_methods_as_other(local_api: Api) -> None:
    from api.observability import KNOWN_METHODS

    for method in ("PROPFIND", "PURGE", "MKCOL", "LOCK", "GET"):
        local_api.client.request(method, "/v1/jobs/a")
    samples = [s for f in text_string_to_metric_families(local_api.client.get("/metrics").text)
               for s in f.samples if s.name == "rift_http_requests_total"]
    # Before: a series for each method a client sent (some 40 pass httptools, any with h11).
    assert {s.labels["method"] for s in samples} == {"GET", "other"} <= KNOWN_METHODS | {"other"}
    assert sum(s.value for s in samples if s.labels["method"] == "other") == 4


def test_metrics_token_is_required_when_set(sqlite_url: str, tmp_path: Path,
                                            start_api: Callable[..., Api]) -> None:
    api = start_api(_settings(sqlite_url, tmp_path, METRICS_TOKEN="s3cret"),
                    dispatcher=RecordingDispatcher())
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        refused = api.client.get("/metrics", headers=headers)
        assert refused.status_code == 401
        assert error_of(refused)["field"] == "Authorization"
    allowed = api.client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert allowed.status_code == 200 and "rift_http_requests_total" in allowed.text


def test_materialize_refuses_unfinished_jobs_and_bad_alphas(local_api: Api,
                                                            small_cnn_file: Path) -> None:
    checkpoint = upload_checkpoint(local_api, small_cnn_file)
    job = local_api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                                  "config": digits_config()}).json()
    queued = local_api.client.post(f"/v1/jobs/{job['id']}/materialize", json={"alpha": 0.5})
    assert queued.status_code == 409
    assert error_of(queued)["code"] == "job_not_succeeded" and error_of(queued)["field"] == "job_id"
    for body, field in (({"alpha": -0.1}, "alpha"), ({}, "alpha"),
                        ({"alpha": 0.5, "extra": 1}, "extra")):
        bad = local_api.client.post(f"/v1/jobs/{job['id']}/materialize", json=body)
        assert bad.status_code == 422 and error_of(bad)["field"] == field, bad.text
    unknown = local_api.client.get(f"/v1/jobs/{job['id']}/materializations/nope")
    assert unknown.status_code == 404 and error_of(unknown)["field"] == "materialization_id"
    assert local_api.client.post("/v1/jobs/nope/materialize", json={"alpha": 0}).status_code == 404
    assert local_api.client.get(f"/v1/jobs/{job['id']}/materializations").json()["items"] == []
