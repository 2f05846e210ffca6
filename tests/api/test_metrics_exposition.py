"""What a Prometheus operator scraping the API's ``/metrics`` relies on, checked on a live server
after a spread of requests (ids in paths, static files, unknown paths, query strings): the text
parses, every family has HELP and TYPE, names follow Prometheus conventions, and no label value
carries a request's own strings (ids, file names), which would grow a series per request."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from persistence.settings import Settings
from tests.api.helpers import Api, RecordingDispatcher
from tests.api.report_checks import exposition_problems
from tests.service_fixtures import settings_from_env

UNIQUE = "zq7unique"


@pytest.fixture
def local_api(sqlite_url: str, tmp_path: Path, start_api: Callable[..., Api]) -> Api:
    settings: Settings = settings_from_env({
        "DATABASE_URL": sqlite_url, "BROKER_URL": "memory://", "STORE_KIND": "local",
        "STORE_ROOT": str(tmp_path / "objects"), "WORK_DIR": str(tmp_path / "work")})
    return start_api(settings, dispatcher=RecordingDispatcher())


def test_every_family_is_well_formed_and_no_label_carries_a_requests_strings(
        local_api: Api) -> None:
    client = local_api.client
    for path in (f"/v1/jobs/{UNIQUE}1", f"/v1/jobs/{UNIQUE}2/report",
                 f"/v1/jobs/{UNIQUE}3/results/{UNIQUE}4", f"/static/{UNIQUE}5/a.js",
                 f"/static/{UNIQUE}6", f"/{UNIQUE}7", f"/v1/{UNIQUE}8/{UNIQUE}9",
                 f"/v1/webhooks/{UNIQUE}a/deliveries", f"/v1/datasets/{UNIQUE}b",
                 f"/v1/checkpoints/{UNIQUE}c", f"/v1/jobs?labels.{UNIQUE}d=1",
                 f"/docs/{UNIQUE}e", f"/healthz/{UNIQUE}f"):
        client.get(path)
        client.post(path, content=b"{}")
    text = client.get("/metrics").text
    assert UNIQUE not in text, [line for line in text.splitlines() if UNIQUE in line][:5]

    assert exposition_problems(text) == []


def test_the_apps_own_routes_and_static_files_are_counted_by_their_template(
        local_api: Api) -> None:
    """``/openapi.json`` (a Starlette route) and ``/static/...`` (a mount) were counted as
    ``<unmatched>``, beside the 404s of unknown paths: a dashboard of unknown paths showed 200s,
    and the docs' traffic showed nowhere."""
    client = local_api.client
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/static/swagger-ui/swagger-ui.css").status_code == 200
    assert client.get(f"/static/{UNIQUE}/a.js").status_code == 404
    assert client.get(f"/{UNIQUE}").status_code == 404
    samples = [s for f in text_string_to_metric_families(client.get("/metrics").text)
               for s in f.samples if s.name == "rift_http_requests_total"]
    counted = {(s.labels["route"], s.labels["status"]): s.value for s in samples}
    assert counted[("/openapi.json", "200")] == 1
    assert counted[("/static/{path}", "200")] == 1 and counted[("/static/{path}", "404")] == 1
    assert counted[("<unmatched>", "404")] == 1 and ("<unmatched>", "200") not in counted



def test_the_checker_names_each_kind_of_problem() -> None:
    bad = ("# TYPE x_latency_ms histogram\n"
           'x_latency_ms_bucket{le="1.0"} 2\nx_latency_ms_bucket{le="+Inf"} 1\n'
           "x_latency_ms_count 1\nx_latency_ms_sum 1\n")
    assert exposition_problems(bad) == [
        "x_latency_ms: no HELP", "x_latency_ms: not in base units",
        "x_latency_ms: a histogram not in seconds or bytes",
        "x_latency_ms{}: buckets not sorted, cumulative, to +Inf"]
