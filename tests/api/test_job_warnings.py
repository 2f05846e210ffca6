"""A job's warnings (its ``warning`` events) where a user looks at the job: ``GET /v1/jobs/{id}``,
the list with ``?expand=warnings``, the cancel answer and the report page. Before, only the
event log held them, so a client that polled the job and downloaded its results never learned
that the result was questionable. The events are written as the worker writes them
(``persistence.jobs.append_event``); a real run's warning is checked in test_sweep_jobs.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from persistence import jobs
from persistence.job_warnings import MAX_JOB_WARNINGS
from persistence.models import utcnow
from persistence.records import create_checkpoint
from persistence.transactions import log_event
from tests.api.helpers import Api, digits_config
from tests.api.report_checks import page_problems

pytestmark = pytest.mark.service

#: Markup in a message (a module name is the user's, and messages quote them).
HOSTILE = "not scored: <img src=x onerror=alert(1)>&amp;"


def new_jobs(api: Api, count: int) -> list[str]:
    """``count`` queued jobs of the API's project, written straight to the database."""
    with api.sessions() as session:
        checkpoint = create_checkpoint(
            session, filename="m.safetensors", size=1, sha256="0" * 64, format="safetensors",
            storage_key="checkpoints/m", num_tensors=1, num_parameters=1,
            project_id=api.project_id)
        return [jobs.create_job(session, spec=digits_config(), checkpoint_id=checkpoint.id,
                                project_id=api.project_id)[0].id for _ in range(count)]


def warn(api: Api, job_id: str, *payloads: dict[str, Any]) -> None:
    with api.sessions() as session:
        for payload in payloads:
            jobs.append_event(session, job_id, "warning", payload)


def section(page: str) -> str:
    """The report's Warnings section: from its heading to the next."""
    start = page.index("<h2>Warnings</h2>")
    return page[start:page.index("<h2>", start + 1)]


def test_warnings_in_the_job_its_list_item_and_its_report(api: Api) -> None:
    warned, quiet = new_jobs(api, 2)
    preflight = {"stage": "preflight", "message": "the preflight sample has 20 examples"}
    warn(api, warned, preflight, {"stage": "mrc", "message": HOSTILE})
    with api.sessions() as session:
        jobs.append_event(session, warned, "epoch", {"epoch": 1, "message": "not a warning"})
    warn(api, warned, preflight)  # a retried stage says it again

    job = api.client.get(f"/v1/jobs/{warned}").json()
    assert [(w["stage"], w["candidate"], w["message"], w["count"]) for w in job["warnings"]] == [
        ("preflight", None, preflight["message"], 2), ("mrc", None, HOSTILE, 1)]
    assert job["warnings_total"] == 2
    assert job["warnings"][0]["at"] <= job["warnings"][1]["at"]
    none = api.client.get(f"/v1/jobs/{quiet}").json()
    assert none["warnings"] == [] and none["warnings_total"] == 0

    # A list item carries them only when asked for (one statement for the page).
    listed = api.client.get("/v1/jobs").json()["items"]
    assert all(item["warnings"] is None and item["warnings_total"] is None for item in listed)
    expanded = {item["id"]: item for item in
                api.client.get("/v1/jobs", params={"expand": "warnings"}).json()["items"]}
    assert expanded[warned]["warnings"] == job["warnings"]
    assert expanded[quiet]["warnings"] == [] and expanded[quiet]["warnings_total"] == 0
    bad = api.client.get("/v1/jobs", params={"expand": "warning"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "expand"
    assert "did you mean 'warnings'" in bad.json()["error"]["message"]

    page = api.client.get(f"/v1/jobs/{warned}/report").text
    shown = section(page)
    assert page.index("</dl>") < page.index("<h2>Warnings</h2>") < page.index("<h2>Charts</h2>")
    assert f"<dt>preflight</dt><dd>{preflight['message']} (×2)</dd>" in shown
    assert ("<dt>mrc</dt><dd>not scored: &lt;img src=x onerror=alert(1)&gt;&amp;amp;</dd>"
            in shown)
    assert "<img" not in page and page_problems(page) == []
    assert "No warnings." in section(api.client.get(f"/v1/jobs/{quiet}/report").text)

    # The other answers that are a job in full carry them too.
    cancelled = api.client.post(f"/v1/jobs/{warned}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["warnings"] == job["warnings"]


def test_a_long_list_stops_at_the_bound_and_says_how_many_there_are(api: Api) -> None:
    (job_id,) = new_jobs(api, 1)
    written = MAX_JOB_WARNINGS + 2
    start = utcnow()
    with api.sessions() as session:
        for i in range(written):  # one transaction: a hundred commits are slow on Postgres
            log_event(session, job_id, "warning", {"stage": "mrc", "message": f"w{i}"},
                      start + timedelta(milliseconds=i))
        session.commit()
    job = api.client.get(f"/v1/jobs/{job_id}").json()
    assert [w["message"] for w in job["warnings"]] == [f"w{i}" for i in range(MAX_JOB_WARNINGS)]
    assert job["warnings_total"] == written
    page = api.client.get(f"/v1/jobs/{job_id}/report").text
    assert "2 more warning(s) not shown" in section(page)
