"""``Accept`` on the JSON routes: 406 ``not_acceptable`` only when the header rules JSON out
(RFC 9110 §12.5.1, the most specific range deciding), before the route runs; what the Python
client, browsers and the docs send keeps getting JSON; downloads, the report page and the probes
are never refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.accept import acceptable
from persistence.models import Artifact, Job
from persistence.storage import LocalObjectStore
from tests.api.helpers import Api, digits_config, error_of, upload_checkpoint

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"


@pytest.mark.parametrize(("accept", "json_ok"), [
    (None, True),
    ("", True),
    ("application/json", True),
    ("application/json; charset=utf-8", True),
    ("Application/JSON", True),
    ("*/*", True),
    ("application/*", True),
    (BROWSER, True),
    ("text/html, */*;q=0.1", True),
    ("garbage", True),  # nothing readable: no preference
    ("text/html;q=abc, application/json", True),
    ("text/html", False),
    ("text/html, application/xhtml+xml", False),
    ("text/*", False),
    ("application/json;q=0", False),
    ("application/json;q=0, */*", False),  # the most specific range decides
    ("*/*;q=0", False),
    ("application/*;q=0, text/html", False),
    ("application/xml, application/*;q=0", False),
])
def test_which_accept_headers_rule_json_out(accept: str | None, json_ok: bool) -> None:
    assert acceptable(accept, "application/json") is json_ok


@pytest.mark.service
def test_a_json_route_answers_406_only_when_json_is_ruled_out(api: Api,
                                                              small_cnn_file: Path) -> None:
    refused = api.client.get("/v1/jobs", headers={"Accept": "text/html"})
    assert refused.status_code == 406
    error = error_of(refused)
    assert (error["code"], error["field"]) == ("not_acceptable", "Accept")
    assert error["accepted"] == ["application/json"]
    assert "text/html" in error["message"]
    for accept in ("application/json", "*/*", BROWSER, "application/json;q=0.5, text/html"):
        assert api.client.get("/v1/jobs", headers={"Accept": accept}).status_code == 200, accept

    # Refused before the route runs: a POST creates nothing.
    checkpoint = upload_checkpoint(api, small_cnn_file)
    jobs_before = api.count_jobs()
    posted = api.client.post("/v1/jobs", headers={"Accept": "text/html"},
                             json={"checkpoint_id": checkpoint["id"], "config": digits_config()})
    assert posted.status_code == 406 and api.count_jobs() == jobs_before
    created = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                                "config": digits_config()})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]

    # The events route also answers a live stream: its refusal names both.
    events = api.client.get(f"/v1/jobs/{job_id}/events", headers={"Accept": "text/html"})
    assert events.status_code == 406
    assert error_of(events)["accepted"] == ["application/json", "text/event-stream"]

    # Routes answering other types are never refused: a download (the client sends
    # application/json there too), the HTML report, the probes, the docs.
    stored = LocalObjectStore(api.settings.store_root).put_bytes(
        f"jobs/{job_id}/artifacts/mrc.csv", b"module,mrc\nfc,0.1\n")
    with api.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status = "succeeded"
        session.add(Artifact(job_id=job_id, name="mrc.csv", storage_key=stored.key,
                             size=stored.size, sha256=stored.sha256, content_type="text/csv"))
        session.commit()
    for accept in ("application/json", "text/html", "image/png"):
        download = api.client.get(f"/v1/jobs/{job_id}/artifacts/mrc.csv",
                                  headers={"Accept": accept})
        assert download.status_code == 200 and download.content == b"module,mrc\nfc,0.1\n"
    report = api.client.get(f"/v1/jobs/{job_id}/report", headers={"Accept": "application/json"})
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    for path in ("/healthz", "/v1/healthz", "/openapi.json", "/docs"):
        assert api.client.get(path, headers={"Accept": "text/html"}).status_code == 200, path
