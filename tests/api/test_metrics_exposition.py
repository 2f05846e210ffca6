"""What a Prometheus operator scraping the API's ``/metrics`` relies on, checked on a live server
after a spread of requests (ids in paths, static files, unknown paths, query strings): the text
parses, every family has HELP and TYPE, names follow Prometheus conventions, and no label value
carries a request's own strings (ids, file names), which would grow a series per request."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from persistence.settings import Settings
from tests.api.helpers import Api, RecordingDispatcher
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

    helps = set(re.findall(r"^# HELP (\S+) \S", text, re.M))
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    families = list(text_string_to_metric_families(text))
    assert families
    for family in families:
        exposed = family.name + ("_total" if family.type == "counter" else "")
        assert exposed in helps or family.name in helps, family.name
        assert types.get(exposed, types.get(family.name)) == family.type, family.name
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", family.name), family.name
        # Base units only: seconds, bytes (not ms, kb).
        assert not re.search(r"_(ms|milliseconds|minutes|hours|kb|mb|kilobytes|megabytes)"
                             r"(_|$)", family.name), family.name
        if family.type == "counter":
            assert {s.name for s in family.samples} <= {family.name + "_total",
                                                        family.name + "_created"}, family.name
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_bytes")), family.name
            for labels in {tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                           for s in family.samples}:
                bounds = [float(s.labels["le"]) for s in family.samples
                          if s.name.endswith("_bucket")
                          and tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                          == labels]
                assert bounds == sorted(bounds) and bounds[-1] == float("inf"), family.name
                counts = [s.value for s in family.samples if s.name.endswith("_bucket")
                          and tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                          == labels]
                assert counts == sorted(counts), family.name  # cumulative


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
